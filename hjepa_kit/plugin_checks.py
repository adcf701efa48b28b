"""What a plugin gets wrong, said in its author's terms, with what pluggy's own messages leave out.

pluggy checks hook implementations when a plugin is registered; :func:`hook_problems` says what
it refuses, naming the nearest hook or argument name and the hook's real arguments. The registry
(:mod:`hjepa_kit.registry`), ``hjepa config validate`` (a configured callback) and
:func:`hjepa_kit.testing.check_component` report these sentences. :func:`documentation_gaps`
finds a component without a summary or a parameter without a help text.
"""

from __future__ import annotations

from typing import Any

import attrs
import pluggy

from .params import suggest

__all__ = ["hook_problems", "spec_names", "documentation_gaps"]


def hook_problems(pm: pluggy.PluginManager, plugin: Any) -> list[str]:
    """What pluggy refuses in ``plugin``'s ``@hookimpl`` functions, one sentence each (empty: nothing).

    pluggy refuses a function that asks for an argument its hook does not pass (``register``) or
    whose name matches no hook spec (``check_pending``), naming the plugin and printing the
    function. Each sentence here adds what pluggy's message leaves out: the nearest hook or
    argument name and the hook's real arguments. The functions are read by pluggy itself (a
    manager without specs refuses none), so their arguments are the ones pluggy checks.
    """
    reader = pluggy.PluginManager(pm.project_name)
    reader.register(plugin)
    hooks = spec_names(pm)
    problems = []
    for read in reader.get_hookcallers(plugin) or []:
        caller = getattr(pm.hook, read.name, None)
        for impl in read.get_hookimpls():
            if caller is None or not caller.has_spec():
                if not impl.optionalhook:
                    problems.append(f"{read.name} matches no hook spec{suggest(read.name, hooks)}")
                continue
            allowed = caller.spec.argnames
            extra = [a for a in impl.argnames if a not in allowed + caller.spec.kwargnames]
            if extra:
                problems.append(
                    f"{read.name}({', '.join(impl.argnames)}) asks for {', '.join(repr(a) for a in extra)}, which "
                    f"{read.name} does not pass{suggest(extra[0], allowed)}; its arguments are {', '.join(allowed)} "
                    "(take any of them, by these names)"
                )
    return problems


def spec_names(pm: pluggy.PluginManager) -> list[str]:
    """The hooks ``pm`` has a spec for (a refused plugin may leave a caller without one behind)."""
    return [h for h in dir(pm.hook) if h.startswith("hjepa_") and getattr(pm.hook, h).has_spec()]


def documentation_gaps(summary: str, params: type) -> str:
    """What a component registered with ``summary`` and parameter class ``params`` leaves undocumented ("": nothing)."""
    gaps = []
    if not summary.strip():
        gaps.append("no summary (pass summary=\"one line\" to register, or give the factory a docstring)")
    undocumented = [f.name for f in attrs.fields(params) if f.init and not str((f.metadata or {}).get("help") or "").strip()]
    if undocumented:
        gaps.append(f"parameters without a help text: {', '.join(undocumented)} (declare each with "
                    "hjepa_kit.params.param(default, help=\"...\"))")
    return " and ".join(gaps)
