"""The environment variables a task's spec may not set (``env`` and ``secrets``), unless the task is a
``command`` task: those that change how an interpreter, the dynamic loader or a helper program behaves.
Setting one of them is running code (``PYTHONWARNINGS`` naming a module that opens ``BROWSER``, a
``BASH_ENV`` the shell expands), which an agent with ``command`` tasks disabled must not allow.

One list, read at submit by the coordinator (taskspec.py: 422 naming ``env.<NAME>``) and again by the
agent before it starts a task (lease_run.py), so a spec stored by an older coordinator is refused too.
Names are compared upper-cased. ``command`` tasks keep their env as given: they run code already.
The list, and what it leaves out on purpose, is documented in docs/security.md.
"""

from __future__ import annotations

from collections.abc import Iterable

TRUSTED_TASK_TYPES = frozenset({"command"})  # arbitrary code by design: their env is theirs

# every name with one of these prefixes, and why
REFUSED_PREFIXES: dict[str, str] = {
    "PYTHON": "changes how the Python interpreter starts (PYTHONPATH, PYTHONWARNINGS, PYTHONSTARTUP...)",
    "LD_": "changes what the dynamic loader loads (LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT...)",
    "GIT_": "names programs git runs and config it reads (GIT_SSH_COMMAND, GIT_CONFIG_*...)",
    "CUDA_INJECTION": "makes the CUDA runtime load a library",
    "MLOC_": "belongs to the agent's contract with the task (task_contract.py)",
}
# these exact names, and why
REFUSED_NAMES: dict[str, str] = {
    **dict.fromkeys(("BASH_ENV", "ENV"), "makes a shell run the file it names (expanding it first) as it starts"),
    **dict.fromkeys(("SHELLOPTS", "BASHOPTS", "PS4"), "changes how every bash script runs (xtrace with PS4 runs code)"),
    **dict.fromkeys(("BROWSER", "PAGER", "EDITOR", "VISUAL", "SSH_ASKPASS"), "names a program a library may run"),
    **dict.fromkeys(("PERL5OPT", "PERL5LIB", "PERLLIB", "PERL5DB"), "changes how perl starts"),
    **dict.fromkeys(("RUBYOPT", "RUBYLIB"), "changes how ruby starts"),
    **dict.fromkeys(("NODE_OPTIONS", "NODE_PATH"), "changes how node starts"),
    **dict.fromkeys(("JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS"), "changes how a JVM starts"),
    **dict.fromkeys(("GCONV_PATH", "GLIBC_TUNABLES"), "changes what the C library loads or how it behaves"),
    "PATH": "changes which program a name runs (libraries start compilers, git, workers by name)",
    # the hub client follows these without the agent's URL policy (modules/sources/url_policy.py)
    **dict.fromkeys(("HF_ENDPOINT", "HF_HUB_ENDPOINT"), "points the Hugging Face client at another server, "
                    "past the agent's URL checks"),
}


def refused_reason(name: str) -> str | None:
    """Why a task other than ``command`` may not set ``name``, or None when it may."""
    upper = name.upper()
    if upper in REFUSED_NAMES:
        return REFUSED_NAMES[upper]
    return next((why for prefix, why in REFUSED_PREFIXES.items() if upper.startswith(prefix)), None)


def refused_variable(task_type: str, env: Iterable[str], secrets: Iterable[str] = ()) -> tuple[str, str] | None:
    """The first variable of a spec's ``env`` or ``secrets`` that its task type may not set, as
    (``env.<NAME>`` or ``secrets.<NAME>``, the message), or None."""
    if task_type in TRUSTED_TASK_TYPES:
        return None
    for section, names in (("env", env), ("secrets", secrets)):
        for name in names:
            if (why := refused_reason(name)) is not None:
                return f"{section}.{name}", refusal_message(task_type, name, why)
    return None


def refusal_message(task_type: str, name: str, why: str) -> str:
    return (f"{name} is not allowed in {task_type!r} tasks: it {why}; only 'command' tasks may set such "
            "variables (docs/security.md)")
