"""Backends that run the three graphs (``encode_video``, ``encode_audio``, ``denoise``).

``create_engine(name, ...)`` is the one factory; every engine exposes the same
small interface as :class:`engines.base.Engine`, so ``diffsal.inference`` drives
them all with the same DDIM loop.
"""
from .base import Engine, EngineUnavailable, available_engines, create_engine, register_engine

__all__ = ["Engine", "EngineUnavailable", "available_engines", "create_engine", "register_engine"]
