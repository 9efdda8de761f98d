"""Task files in the style of lm-evaluation-harness (v0.4) YAML, for the subset this package evaluates: zero-shot
multiple choice scored by log-likelihood, and (an extension) prompt sets for generation.

A multiple-choice file::

    task: my_task
    axis: harmlessness                # this package's field: the axis the score counts toward
    dataset_path: data/my_task.jsonl  # a local .jsonl/.json/.csv/.tsv/.parquet file, relative to the YAML file;
                                      # or json|csv|parquet with dataset_kwargs: {data_files: {test: PATH}}
    test_split: test                  # which data_files entry (default: test, else validation)
    output_type: multiple_choice
    doc_to_text: "Question: {{question}}\\nAnswer:"
    doc_to_choice: "{{choices}}"      # a list, a field name, or a template rendering a Python list literal
    doc_to_target: answer             # an int, a field name, or a template; an index or one of the choices' text
    target_delimiter: " "
    description: ""                   # prepended to every context
    metric_list: [{metric: acc}, {metric: acc_norm}]   # the first is the headline

Templates are Jinja2 over the record's fields with undefined names an error, as in the harness; a field name alone
(``doc_to_text: question``) means that field's value. Each question is scored as the harness scores it (see
``bfpo.eval.discriminative``): context = description + doc_to_text, continuation = target_delimiter + choice.

A generative file has ``output_type: generate_until``, ``axis`` (harmlessness, over_refusal or helpfulness) and
``doc_to_text`` (the user turn); it becomes a ``PromptSet`` answered through the model's chat template.

Not supported, and refused with the file and key named: few-shot examples (``num_fewshot`` > 0), ``!function``
hooks (``process_docs``, Python ``doc_to_*``), Hugging Face hub ids and ``repeats`` > 1.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bfpo.errors import DataError
from bfpo.eval.files import read_records, read_text, where
from bfpo.eval.generative import PROMPT_AXES, PromptSet
from bfpo.eval.tasks import AXES, METRICS, Question, Task

FORMATS = {"json": (".json", ".jsonl"), "csv": (".csv", ".tsv"), "parquet": (".parquet",)}
KNOWN_KEYS = {"task", "axis", "dataset_path", "dataset_kwargs", "dataset_name", "test_split", "validation_split",
              "training_split", "fewshot_split", "output_type", "doc_to_text", "doc_to_choice", "doc_to_target",
              "target_delimiter", "fewshot_delimiter", "description", "metric_list", "num_fewshot", "repeats",
              "metadata", "tag", "group", "should_decontaminate", "doc_to_decontamination_query", "limit"}
OUTPUT_TYPES = ("multiple_choice", "generate_until")


def _environment():
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    return SandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True)


class _Spec:
    """One YAML file's fields, each read with an error that names the file and the key."""

    def __init__(self, path: Path, data: Mapping[str, Any]):
        self.path, self.data = path, data
        self.env = _environment()
        self._templates: dict[str, Any] = {}

    def get(self, key: str, kind: type | tuple, default: Any = None, required: bool = False) -> Any:
        if key not in self.data or self.data[key] is None:
            if required:
                raise DataError(f"{self.path}: missing key {key!r}")
            return default
        value = self.data[key]
        if not isinstance(value, kind) or isinstance(value, bool) and bool not in (
                kind if isinstance(kind, tuple) else (kind,)):
            raise DataError(f"{self.path}: key {key!r} is {type(value).__name__} {value!r:.60}")
        return value

    def render(self, key: str, template: str, record: Mapping[str, Any], where_: str) -> str:
        """A field's value when ``template`` names one, else the Jinja2 rendering over the record."""
        if template in record:
            return record[template]
        from jinja2 import TemplateError

        try:
            compiled = self._templates.get(template)
            if compiled is None:
                compiled = self._templates[template] = self.env.from_string(template)
            return compiled.render(**record)
        except TemplateError as e:
            raise DataError(f"{where_}: {key} {template!r:.60}: {e}") from e


def read_spec(path: str | os.PathLike) -> _Spec:
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(read_text(path))
    except yaml.MarkedYAMLError as e:
        line = e.problem_mark.line + 1 if e.problem_mark is not None else 0
        hint = " (Python hooks such as !function are not supported)" if "!function" in str(e) else ""
        raise DataError(f"{where(path, line)}: not a task file this package reads: {e.problem}{hint}") from e
    except yaml.YAMLError as e:
        raise DataError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a YAML mapping of task keys")
    unknown = sorted(set(data) - KNOWN_KEYS)
    if unknown:
        raise DataError(f"{path}: unknown keys {unknown}; this package reads {sorted(KNOWN_KEYS)}")
    spec = _Spec(path, data)
    if spec.get("num_fewshot", int, 0) != 0:
        raise DataError(f"{path}: num_fewshot={data['num_fewshot']}: only zero-shot tasks are supported")
    if spec.get("repeats", int, 1) != 1:
        raise DataError(f"{path}: repeats={data['repeats']}: only 1 is supported")
    return spec


def data_file(spec: _Spec) -> Path:
    """The local data file: ``dataset_path`` itself, or ``dataset_kwargs.data_files`` for a json/csv/parquet
    builder; relative paths are relative to the YAML file."""
    raw = spec.get("dataset_path", str, required=True)
    base = spec.path.parent
    if raw in FORMATS:
        kwargs = spec.get("dataset_kwargs", dict, {})
        files = kwargs.get("data_files")
        if isinstance(files, (str, list)):
            files = {"test": files}
        if not isinstance(files, dict) or not files:
            raise DataError(f"{spec.path}: dataset_path: {raw} needs dataset_kwargs.data_files (a path, or split -> "
                            "path)")
        split = spec.get("test_split", str) or ("test" if "test" in files else spec.get("validation_split", str))
        if split not in files:
            raise DataError(f"{spec.path}: split {split!r} is not in dataset_kwargs.data_files ({sorted(files)})")
        chosen = files[split]
        if isinstance(chosen, list):
            if len(chosen) != 1:
                raise DataError(f"{spec.path}: data_files[{split!r}] lists {len(chosen)} files; give one")
            chosen = chosen[0]
        path = Path(chosen)
        if path.suffix.lower() not in FORMATS[raw]:
            raise DataError(f"{spec.path}: data_files[{split!r}] = {chosen!r} is not a {raw} file")
    else:
        path = Path(raw)
        if "/" in raw and not path.suffix and not (base / path).exists():
            raise DataError(f"{spec.path}: dataset_path {raw!r} looks like a Hugging Face hub id; only local files "
                            "are read (point dataset_path at a .jsonl/.json/.csv/.parquet file)")
    return path if path.is_absolute() else base / path


def _choices(spec: _Spec, record: Mapping[str, Any], source: str) -> list[str]:
    raw = spec.data.get("doc_to_choice")
    if raw is None:
        raise DataError(f"{spec.path}: missing key 'doc_to_choice'")
    if isinstance(raw, list):
        value = raw
    elif isinstance(raw, str):
        value = spec.render("doc_to_choice", raw, record, source)
        if isinstance(value, str):
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError) as e:
                raise DataError(f"{source}: doc_to_choice rendered {value!r:.80}, not a list") from e
    else:
        raise DataError(f"{spec.path}: key 'doc_to_choice' is {type(raw).__name__}, expected a list or a template")
    if not isinstance(value, (list, tuple)) or len(value) < 2:
        raise DataError(f"{source}: doc_to_choice gave {value!r:.80}, expected a list of at least 2 choices")
    out = []
    for i, c in enumerate(value):
        if isinstance(c, bool) or not isinstance(c, (str, int, float)):
            hint = " (YAML reads unquoted yes/no/on/off as booleans: quote them)" if isinstance(c, bool) else ""
            raise DataError(f"{source}: choice {i} is {c!r:.40}, expected text{hint}")
        out.append(str(c))
    return out


def _target(spec: _Spec, record: Mapping[str, Any], choices: list[str], source: str) -> int:
    raw = spec.data.get("doc_to_target")
    if raw is None:
        raise DataError(f"{spec.path}: missing key 'doc_to_target'")
    value = raw if isinstance(raw, int) and not isinstance(raw, bool) else \
        spec.render("doc_to_target", str(raw), record, source)
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            value = int(text)
        elif value in choices or text in choices:
            return choices.index(value if value in choices else text)
        else:
            raise DataError(f"{source}: doc_to_target gave {value!r:.60}: neither an index nor one of the choices "
                            f"{choices}")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(choices):
        raise DataError(f"{source}: doc_to_target gave {value!r:.40}, out of range for {len(choices)} choices")
    return value


def _headline(spec: _Spec) -> str:
    metrics = spec.get("metric_list", list, [{"metric": "acc"}])
    names = []
    for m in metrics:
        if not isinstance(m, dict) or not isinstance(m.get("metric"), str):
            raise DataError(f"{spec.path}: metric_list entries must be mappings with a 'metric' name, got {m!r:.60}")
        names.append(m["metric"])
    if not names or names[0] not in METRICS:
        raise DataError(f"{spec.path}: metric_list starts with {names[:1]}; the headline metric must be one of "
                        f"{sorted(METRICS)}")
    return names[0]


def load_yaml_task(path: str | os.PathLike, *, limit: int | None = None) -> Task | PromptSet:
    """The task a YAML file describes: a ``Task`` (multiple choice) or a ``PromptSet`` (generate_until); the first
    ``limit`` records only when given."""
    spec = read_spec(path)
    name = spec.get("task", str, required=True)
    output_type = spec.get("output_type", str, "multiple_choice")
    if output_type not in OUTPUT_TYPES:
        raise DataError(f"{spec.path}: output_type {output_type!r}: expected one of {OUTPUT_TYPES}")
    axis = spec.get("axis", str, required=True)
    allowed = AXES if output_type == "multiple_choice" else PROMPT_AXES
    if axis not in allowed:
        raise DataError(f"{spec.path}: axis {axis!r}: a {output_type} task counts toward one of {allowed}")
    text_template = spec.get("doc_to_text", str, required=True)
    description = spec.get("description", str, "")
    file = data_file(spec)
    records = read_records(file)
    if limit is not None:
        records = records[:limit]
    if not records:
        raise DataError(f"{file}: no records")
    if output_type == "generate_until":
        prompts = []
        for line, record in records:
            text = description + str(spec.render("doc_to_text", text_template, record, where(file, line)))
            if not text.strip():
                raise DataError(f"{where(file, line)}: doc_to_text is empty")
            prompts.append(text)
        return PromptSet(name=name, axis=axis, prompts=tuple(prompts),
                         sources=tuple(where(file, line) for line, _ in records))
    delimiter = spec.get("target_delimiter", str, " ")
    metric = _headline(spec)
    questions = []
    for line, record in records:
        source = where(file, line)
        context = description + str(spec.render("doc_to_text", text_template, record, source))
        choices = _choices(spec, record, source)
        gold = _target(spec, record, choices, source)
        questions.append(Question.full(context, choices, (gold,), target_delimiter=delimiter, source=source))
    return Task(name=name, axis=axis, metric=metric, questions=tuple(questions), source=str(spec.path))
