"""Command-line options generated from configuration dataclasses: one flag per field, nothing typed twice.

Each field of :class:`~headstart.config.TrainConfig` becomes ``--field-name`` (booleans
``--name/--no-name``; ``metadata["flag"]`` renames it) with the field's default and its
``metadata["help"]``. A command takes them with :func:`with_config_options`, and receives one
built, validated config object. Only typer is imported here, so ``headstart --help`` stays instant.
"""
from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Any, Callable, Optional

import typer


@dataclasses.dataclass(frozen=True)
class Flag:
    field: str  # the dataclass field
    name: str  # the option, without dashes
    type: Any
    default: Any
    help: str

    @property
    def decls(self) -> list[str]:
        if self.type is bool:
            return [f"--{self.name}/--no-{self.name}"]
        return [f"--{self.name}"]


def config_flags(cls) -> list[Flag]:
    """The flags of a config dataclass, in field order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        optional = type(None) in typing.get_args(kind)
        base = args[0] if optional and len(args) == 1 else kind
        name = f.metadata.get("flag", f.name.replace("_", "-"))
        out.append(Flag(f.name, name, Optional[base] if optional else base, f.default,
                        _sentence(f.metadata.get("help", ""))))
    return out


def _sentence(text: str) -> str:
    return (text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")) if text else ""


def with_config_options(cls, *, into: str = "config") -> Callable[[Callable], Callable]:
    """Decorator: the command gets ``--flag`` options for every field of ``cls`` (after its own
    parameters) and is called with ``into=cls(**those values)``, validated by the dataclass itself."""
    flags = config_flags(cls)

    def wrap(command: Callable) -> Callable:
        # Resolve the command's own annotations (strings under `from __future__ import annotations`):
        # typer reads types from the signature we hand it, not from the original function.
        hints = typing.get_type_hints(command)
        own = [p.replace(annotation=hints.get(name, p.annotation))
               for name, p in inspect.signature(command).parameters.items() if name != into]
        generated = [inspect.Parameter(f"cfg__{f.field}", inspect.Parameter.KEYWORD_ONLY, annotation=f.type,
                                       default=typer.Option(f.default, *f.decls, help=f.help, show_default=True))
                     for f in flags]

        def run(**kwargs):
            values = {f.field: kwargs.pop(f"cfg__{f.field}") for f in flags}
            return command(**kwargs, **{into: cls(**values)})

        run.__name__, run.__doc__ = command.__name__, command.__doc__
        run.__signature__ = inspect.Signature(own + generated)
        return run

    return wrap
