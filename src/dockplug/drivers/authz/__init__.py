"""``dockplug serve authz``: a fail-closed authorization plugin with policies in Cedar."""
