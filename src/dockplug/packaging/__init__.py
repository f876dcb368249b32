"""Managed (v2) plugins: config.json, rootfs, bundles, the doctor and the Engine API wrappers."""
