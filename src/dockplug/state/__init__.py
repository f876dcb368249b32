"""Durable stores behind one small interface (SQLite now; etcd later for clusters)."""

from dockplug.state.sqlite import VolumeRecord, VolumeStore

__all__ = ["VolumeRecord", "VolumeStore"]
