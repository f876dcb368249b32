"""Hello World volumes (folders under ``base``) as a managed plugin:
``dockplug build examples/hello_project --name hello/plugin:0.1 --create``."""

import shutil
from pathlib import Path

import dockplug


class HelloDriver(dockplug.VolumeDriver):
    def __init__(self, base: str = "/mnt/volumes") -> None:
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)

    def _dir(self, name: str) -> Path:
        if "/" in name or name in ("", ".", ".."):
            raise dockplug.InvalidRequest(f"bad volume name {name!r}")
        return self.base / name

    def create(self, req):
        self._dir(req.name).mkdir(exist_ok=True)

    def remove(self, req):
        shutil.rmtree(self._dir(req.name), ignore_errors=True)

    def mount(self, req):
        return str(self._dir(req.name))

    def unmount(self, req):
        pass

    def path(self, req):
        return str(self._dir(req.name))

    def get(self, req):
        if not self._dir(req.name).is_dir():
            raise dockplug.VolumeNotFound(req.name)
        return dockplug.Volume(name=req.name, mountpoint=str(self._dir(req.name)))

    def list(self, req):
        return [dockplug.Volume(name=p.name, mountpoint=str(p)) for p in self.base.iterdir()]
