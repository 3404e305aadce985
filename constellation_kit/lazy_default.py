"""``lazy_default``: jsonargparse's ``lazy_instance`` without its ``inspect.stack()``.

A class-typed argument's default must be an object whose class path ``--help`` and
``--print_config`` can show, built only when first used: jsonargparse's ``lazy_instance``. To
name the lazy class after its caller's module it calls ``inspect.stack()``, which reads the source
of every frame on the stack and searches ``sys.modules`` for each one's module: about 40 ms a
frame with torch and Lightning loaded, and a default evaluated while its module is imported sits
25-30 frames deep. The five defaults of the data modules cost the first run 1.5-3 s of start-up
that way. The caller's module is ``sys._getframe(1)`` away.
"""

import sys
from typing import TypeVar

from jsonargparse import lazy_instance
from jsonargparse import typing as _jsonargparse_typing

ClassType = TypeVar("ClassType")

# Private in jsonargparse; where a release renames it, lazy_instance itself is used (slower, same result).
_LazyInitBaseClass = getattr(_jsonargparse_typing, "_LazyInitBaseClass", None)


def lazy_default(class_type: type[ClassType], **kwargs) -> ClassType:
    """What ``jsonargparse.lazy_instance(class_type, **kwargs)`` returns, made without walking the stack.

    The same class (``LazyInstance_<name>``, a subclass of ``class_type`` registered on the
    caller's module and reused by later calls from that module) with the same arguments: ``__init__``
    runs on first use, and the parser sees ``class_type``'s path and ``kwargs``.
    """
    if _LazyInitBaseClass is None:
        return lazy_instance(class_type, **kwargs)
    caller = sys.modules.get(sys._getframe(1).f_globals.get("__name__", ""))
    name = f"LazyInstance_{class_type.__name__}"
    lazy_class = getattr(caller, name, None)
    if lazy_class is not None:
        assert issubclass(lazy_class, _LazyInitBaseClass) and issubclass(lazy_class, class_type), name
    else:
        namespace = {"__doc__": f"Class for lazy instances of {class_type}"}
        lazy_class = type(name, (_LazyInitBaseClass, class_type), namespace)
        if caller is not None:
            lazy_class.__module__ = caller.__name__
            setattr(caller, name, lazy_class)
    return lazy_class(class_type, kwargs)
