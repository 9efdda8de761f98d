"""Multiple-choice scoring equals a hand computation from full-logits forwards (acc, acc_norm, mc2, partial
scoring), does not depend on batch size, padding or sharding, compiles once per length bucket, and reports
malformed task files with file and line."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bfpo.errors import DataError
from bfpo.eval import discriminative as disc
from bfpo.eval.generative import FIXTURES
from bfpo.eval.tasks import load_task
from bfpo.generate import bucket
from bfpo.model.config import LlamaConfig
from bfpo.model.llama import LlamaForCausalLM, shard_model
from bfpo.tokenize import Tokenizer
from runtime import make_mesh

pytestmark = pytest.mark.unsharded  # model code compared on one device, on purpose

BOS = 257  # the byte tokenizer's BOS id; byte b has id b


@pytest.fixture(scope="module")
def model():
    return LlamaForCausalLM(LlamaConfig.tiny(), rngs=nnx.Rngs(3))


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.byte_level()


@pytest.fixture(scope="module")
def tasks():
    return [load_task(FIXTURES / "mc3.jsonl", axis="helpfulness"),
            load_task(FIXTURES / "mc2.jsonl", axis="helpfulness", metric="mc2"),
            load_task(FIXTURES / "partial.jsonl", axis="harmlessness")]


@jax.jit
def _logits(model, tokens):
    return model(tokens)


def reference_ll(model, context: str, continuation: str) -> float:
    """log p(continuation | context) from one unpadded full-logits forward, log-softmax in float64 NumPy, with
    the byte tokenizer's ids written out by hand (byte value; BOS for an empty context)."""
    ctx = list(context.encode()) or [BOS]
    cont = list(continuation.encode())
    row = np.zeros((1, 128), np.int32)  # right padding is invisible to causal attention: one compilation
    row[0, :len(ctx) + len(cont)] = ctx + cont
    logits = np.asarray(_logits(model, jnp.asarray(row)), np.float64)[0]
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    return float(sum(logp[len(ctx) - 1 + j, t] for j, t in enumerate(cont)))


@pytest.fixture(scope="module")
def reference(model, tasks):
    return {t.name: [np.array([reference_ll(model, c, y) for c, y in q.pairs]) for q in t.questions] for t in tasks}


@pytest.fixture(scope="module")
def evaluated(model, tok, tasks):
    """(results, log-likelihoods, compilations it took) of one evaluation, 8 rows per batch."""
    before = disc._score_batch._cache_size()
    results = disc.evaluate_discriminative(model, tok, tasks, batch_size=8)
    compiles = disc._score_batch._cache_size() - before
    return results, disc.task_loglikelihoods(model, tok, tasks, batch_size=8), compiles


def test_loglikelihoods_equal_full_logits_reference(evaluated, reference):
    _, lls, _ = evaluated
    for name, expected in reference.items():
        for got, want in zip(lls[name], expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_acc_and_acc_norm_by_hand(evaluated, reference):
    results = evaluated[0]
    acc, acc_norm = [], []
    for line, ll in zip((FIXTURES / "mc3.jsonl").read_text().splitlines(), reference["mc3"]):
        record = json.loads(line)
        lengths = np.array([len(c) for c in record["choices"]], float)
        acc.append(int(np.argmax(ll)) == record["gold"])
        acc_norm.append(int(np.argmax(ll / lengths)) == record["gold"])
    r = results["mc3"]
    assert (r["n"], r["axis"], r["metric"]) == (3, "helpfulness", "acc")
    assert r["acc"] == pytest.approx(np.mean(acc)) and r["score"] == r["acc"]
    assert r["acc_norm"] == pytest.approx(np.mean(acc_norm))
    # Partial scoring: the option sits in the context, the shared continuation is scored.
    ll = reference["partial"][0]
    assert results["partial"]["acc"] == float(np.argmax(ll) == 0)
    assert results["partial"]["acc_norm"] == results["partial"]["acc"]


def test_mc2_by_hand(evaluated, reference):
    results = evaluated[0]
    expected = []
    for line, ll in zip((FIXTURES / "mc2.jsonl").read_text().splitlines(), reference["mc2"]):
        p = np.exp(ll - ll.max())
        expected.append(p[json.loads(line)["golds"]].sum() / p.sum())
    assert results["mc2"]["mc2"] == pytest.approx(np.mean(expected), rel=1e-4)
    assert results["mc2"]["score"] == results["mc2"]["mc2"]


def test_metric_definitions_on_handmade_loglikelihoods():
    from bfpo.eval.tasks import Question

    q = Question.full("c", ["aaaa", "b", "cc"], [0])  # choice lengths 4, 1, 2 characters
    s = disc.question_scores(q, np.array([-6.0, -5.0, -9.0]))  # summed: choice 1; per character: -1.5, -5, -4.5
    assert (s["acc"], s["acc_norm"]) == (0.0, 1.0)
    s = disc.question_scores(q, np.array([-3.0, -5.0, -9.0]))  # choice 0 both ways
    assert (s["acc"], s["acc_norm"]) == (1.0, 1.0)
    tie = disc.question_scores(Question.full("c", ["x", "y"], [0]), np.array([-1.0, -1.0]))
    assert tie["acc"] == 1.0 and tie["pct_stereotype"] == 0.0  # argmax ties go to the first index; > is strict
    mc2 = disc.question_scores(Question.full("c", ["x", "y", "z"], [0, 2]), np.log([0.2, 0.3, 0.1]))
    assert mc2["mc2"] == pytest.approx(0.3 / 0.6)


def test_invariant_to_batch_size_padding_and_sharding(model, tok, tasks, evaluated):
    """Batches of 4 instead of 8 (other neighbours, buckets and filler rows), split over data x fsdp with the
    parameters sharded over fsdp x tensor, give the same log-likelihoods."""
    _, lls, _ = evaluated
    pairs = [p for t in tasks for q in t.questions for p in q.pairs]
    flat = np.concatenate([x for t in tasks for x in lls[t.name]])
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded = disc.score_pairs(shard_model(model, mesh), tok, pairs, batch_size=4, mesh=mesh)
    np.testing.assert_allclose(sharded, flat, atol=1e-4)


def test_compiles_once_per_length_bucket(evaluated, tasks, tok):
    """Rows sorted longest first, 8 per batch; a batch is as long as the power of two at least its longest
    context plus its longest continuation, and each distinct length compiles once."""
    _, _, compiles = evaluated
    rows = sorted((disc.encode_pair(tok, c, y) for t in tasks for q in t.questions for c, y in q.pairs),
                  key=lambda r: -len(r[0]) - len(r[1]))
    lengths = {bucket(max(len(c) for c, _ in rows[i:i + 8]) + max(len(y) for _, y in rows[i:i + 8]))
               for i in range(0, len(rows), 8)}
    assert compiles == len(lengths) < -(-len(rows) // 8)


def write(tmp_path, name, lines):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def test_bad_task_files_name_file_and_line(tmp_path):
    ok = {"context": "a", "choices": ["x", "y"], "gold": 0}
    path = write(tmp_path, "gold.jsonl", [ok, {"context": "a", "choices": ["x", "y"], "gold": 2}])
    with pytest.raises(DataError, match=r"gold\.jsonl:2: gold index 2 is out of range for 2 choices"):
        load_task(path, axis="helpfulness")
    path = write(tmp_path, "empty.jsonl", [ok, ok, {"context": "a", "choices": [], "gold": 0}])
    with pytest.raises(DataError, match=r"empty\.jsonl:3: 'choices' must be a non-empty list"):
        load_task(path, axis="helpfulness")
    path = write(tmp_path, "golds.jsonl", [{"context": "a", "choices": ["x", "y"], "golds": [0, 5]}])
    with pytest.raises(DataError, match=r"golds\.jsonl:1: gold index 5"):
        load_task(path, axis="helpfulness", metric="mc2")
    path = write(tmp_path, "text.jsonl", [{"context": "a", "choices": ["x", 3], "gold": 0}])
    with pytest.raises(DataError, match=r"text\.jsonl:1: choices\[1\]"):
        load_task(path, axis="helpfulness")
    (tmp_path / "broken.jsonl").write_text(json.dumps(ok) + "\n{not json\n")
    with pytest.raises(DataError, match=r"broken\.jsonl:2: not valid JSON"):
        load_task(tmp_path / "broken.jsonl", axis="helpfulness")
    with pytest.raises(DataError, match="Task.axis='safety'"):
        load_task(write(tmp_path, "axis.jsonl", [ok]), axis="safety")
