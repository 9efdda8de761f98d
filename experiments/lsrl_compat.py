"""Runs the published LSRL repository's own test suite against this package, with only the imports changed, and
writes which tests pass and which do not (with each failure's message).

The published tests are copied from a local checkout (``--published PATH``; nothing is downloaded) into a
temporary directory; in each file ``import lsrl`` becomes ``import recurrent.lsrl as lsrl`` and ``from lsrl...``
becomes ``from recurrent.lsrl...`` (the published module names ``basic_blocks``, ``sugar_blocks``,
``matrix_tools`` and ``utils`` exist under ``recurrent.lsrl``); nothing else is edited. Each test file runs under
pytest in its own process (the published tests write ``test_results/`` into their working directory, the
temporary one here). The published suite needs ``parameterized`` (``pip install parameterized==0.9.0``).

The notebooks (``--notebooks``, default all four) run the same way: their code cells, in order, with the imports
rewritten and IPython magics (``%...``) dropped, as one script in a fresh process; a notebook passes when the
script ends without an error (its own asserts and computations included) within ``--notebook-timeout-s``.

Writes ``results.json`` (one entry per test or notebook: file, test, outcome, message) and ``results.md`` (counts
per file, then every test that does not pass with its message) to ``--run.out-dir``.

Run: ``python -m experiments.lsrl_compat --published /path/to/LSRL [--files test_sugar.py ...] [--notebooks ...]``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Annotated

import tyro

from experiments.run import cli
from recurrent import CompileError

REPO_ROOT = Path(__file__).resolve().parent.parent
_IMPORT = re.compile(r"^(\s*)import lsrl\b(?!\.)")
_FROM = re.compile(r"^(\s*)from lsrl(\.|\s)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CompatConfig:
    published: str
    """A local checkout of the published repository (its ``tests/`` folder is read)."""
    files: tuple[str, ...] = ()
    """Test files to run (default: every ``tests/test_*.py``)."""
    timeout_s: int = 3600
    """Per file."""
    notebooks: tuple[str, ...] | None = None
    """Notebooks to run (default: every ``*.ipynb`` at the checkout's top level; pass none with ``--notebooks``)."""
    notebook_timeout_s: int = 900
    out_dir: Annotated[str, tyro.conf.arg(name="run.out-dir")] = "runs/lsrl_compat"


def rewrite_imports(source: str) -> tuple[str, int]:
    """(the source with ``lsrl`` imports pointed at ``recurrent.lsrl``, the number of lines changed)."""
    lines, changed = [], 0
    for line in source.splitlines(keepends=True):
        new = _IMPORT.sub(r"\1import recurrent.lsrl as lsrl", line)
        new = _FROM.sub(r"\1from recurrent.lsrl\2", new)
        changed += new != line
        lines.append(new)
    return "".join(lines), changed


def parse_junit(path: Path, file: str) -> list[dict]:
    rows = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                text = (el.get("message") or el.text or "").strip()
                message = text.splitlines()[0][:300] if text else ""
                break
        rows.append({"file": file, "test": f"{case.get('classname', '').rpartition('.')[2]}::{case.get('name')}",
                     "outcome": outcome, "message": message, "seconds": float(case.get("time", 0.0))})
    return rows


def run_file(test_file: Path, work: Path, timeout_s: int) -> tuple[list[dict], float]:
    report = work / f"{test_file.stem}.xml"
    env_path = f"{REPO_ROOT}:{work}"
    start = time.perf_counter()
    try:
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                        str(test_file)], cwd=work, env={**os.environ, "PYTHONPATH": env_path}, timeout=timeout_s,
                       capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        pass
    seconds = time.perf_counter() - start
    if not report.exists():
        return [{"file": test_file.name, "test": "*", "outcome": "error",
                 "message": f"no report (timed out after {timeout_s} s or crashed)", "seconds": seconds}], seconds
    return parse_junit(report, test_file.name), seconds


def notebook_script(path: Path) -> str:
    """The notebook's code cells in order, imports rewritten, IPython magics and shell lines dropped."""
    cells = [c for c in json.loads(path.read_text())["cells"] if c.get("cell_type") == "code"]
    lines = ["import matplotlib", "matplotlib.use('Agg')"]
    for cell in cells:
        src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        src, _ = rewrite_imports(src)
        lines += [l for l in src.splitlines() if not l.lstrip().startswith(("%", "!"))]
    return "\n".join(lines) + "\n"


def run_notebook(path: Path, work: Path, timeout_s: int) -> dict:
    script = work / f"{path.stem}.py"
    script.write_text(notebook_script(path))
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, str(script)], cwd=work, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                              timeout=timeout_s, capture_output=True, text=True)
        ok, err = done.returncode == 0, (done.stderr.strip().splitlines() or [""])[-1][:300]
    except subprocess.TimeoutExpired:
        ok, err = False, f"did not finish within {timeout_s} s"
    return {"file": path.name, "test": "all code cells", "outcome": "passed" if ok else "failed",
            "message": "" if ok else err, "seconds": time.perf_counter() - start}


def main(cfg: CompatConfig) -> list[dict]:
    source = Path(cfg.published) / "tests"
    if not source.is_dir():
        raise CompileError(f"{cfg.published}: no tests/ folder (expected a checkout of the published LSRL repository)")
    files = [source / f for f in cfg.files] if cfg.files else sorted(source.glob("test_*.py"))
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise CompileError(f"not in the checkout: {missing}")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, changes, timing = [], {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shutil.copytree(source, work / "tests")
        for f in (work / "tests").glob("*.py"):
            text, n = rewrite_imports(f.read_text())
            f.write_text(text)
            changes[f.name] = n
        for f in files:
            file_rows, seconds = run_file(work / "tests" / f.name, work, cfg.timeout_s)
            rows += file_rows
            timing[f.name] = seconds
            counts = {o: sum(r["outcome"] == o for r in file_rows) for o in ("passed", "failed", "error", "skipped")}
            print(f"{f.name}: {counts} in {seconds:.0f} s", flush=True)
        books = (sorted(Path(cfg.published).glob("*.ipynb")) if cfg.notebooks is None
                 else [Path(cfg.published) / n for n in cfg.notebooks])
        for nb in books:
            for extra in Path(cfg.published).glob("*.csv"):  # data files a notebook reads beside itself
                shutil.copy(extra, work / extra.name)
            row = run_notebook(nb, work, cfg.notebook_timeout_s)
            rows.append(row)
            timing[nb.name] = row["seconds"]
            changes[nb.name] = sum(rewrite_imports("".join(c["source"]) if isinstance(c["source"], list)
                                                   else c["source"])[1]
                                   for c in json.loads(nb.read_text())["cells"] if c.get("cell_type") == "code")
            print(f"{nb.name}: {row['outcome']} in {row['seconds']:.0f} s {row['message']}", flush=True)
    (out / "results.json").write_text(json.dumps({"rows": rows, "import_lines_changed": changes,
                                                  "seconds": timing}, indent=2) + "\n")
    write_table(rows, changes, timing, out / "results.md")
    print((out / "results.md").read_text())
    return rows


def write_table(rows: list[dict], changes: dict, timing: dict, path: Path) -> None:
    files = sorted({r["file"] for r in rows})
    lines = ["| file | passed | failed | error | skipped | import lines changed | seconds |",
             "|---|---|---|---|---|---|---|"]
    for f in files:
        fr = [r for r in rows if r["file"] == f]
        c = {o: sum(r["outcome"] == o for r in fr) for o in ("passed", "failed", "error", "skipped")}
        lines.append(f"| {f} | {c['passed']} | {c['failed']} | {c['error']} | {c['skipped']} | {changes.get(f, 0)} | "
                     f"{timing.get(f, 0):.0f} |")
    total = {o: sum(r["outcome"] == o for r in rows) for o in ("passed", "failed", "error", "skipped")}
    lines.append(f"| all | {total['passed']} | {total['failed']} | {total['error']} | {total['skipped']} | | |")
    lines += ["", "Tests that do not pass:", "", "| file | test | outcome | message |", "|---|---|---|---|"]
    for r in rows:
        if r["outcome"] != "passed":
            msg = r["message"].replace("|", "\\|")
            lines.append(f"| {r['file']} | {r['test']} | {r['outcome']} | {msg} |")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    cli(CompatConfig, main, expected_errors=(CompileError,))
