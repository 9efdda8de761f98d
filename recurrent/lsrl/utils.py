"""The published ``lsrl.utils`` helpers, for programs and notebooks that import them: the graph plot and path
check, the random smooth target and the vec2vec prompt of the continuous approximation notebook, the
symbolic-value checks and a block-diagonal builder."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from recurrent.lsrl.graph_view import is_path_graph
from recurrent.lsrl.matrix import Matrix

_COLOURS = {"Input": "#b2ff66", "Linear": "#66ffff", "Slice": "#66ffff", "ReLU": "#b266ff", "Concat": "#ffff33",
            "LinState": "#ff6666", "Multiplicative": "#ff66b2"}


def is_directed_path_graph(graph) -> bool:
    """One chain from a single source to a single sink, every other node with one input and one consumer."""
    return graph.number_of_nodes() > 0 and is_path_graph(graph)


def plot_and_save_graph(graph, file_path: str | None = None, figsize=(30, 30), node_types_instead_of_name=False):
    """Draws the DAG in topological layers, coloured by node type, labelled with the name (or type) and dims."""
    import matplotlib

    if file_path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx

    if not graph.is_directed():
        raise ValueError("plot_and_save_graph: the graph is not directed")
    for layer, nodes in enumerate(nx.topological_generations(graph)):
        for node in nodes:
            graph.nodes[node]["layer"] = layer
    pos = nx.multipartite_layout(graph, subset_key="layer", align="horizontal")

    def label(node) -> str:
        kind = type(node).__name__
        ins = "+".join(str(i.dim) for i in node.inputs) or str(node.dim)
        return kind if node_types_instead_of_name else f"{node.name}\n{ins}->{node.dim}"

    plt.figure(figsize=figsize)
    nx.draw(graph, pos, labels={n: label(n) for n in graph.nodes},
            node_color=[_COLOURS.get(type(n).__name__, "#e0e0e0") for n in graph.nodes], node_size=1000,
            font_size=10, arrowstyle="-|>", arrowsize=10)
    if file_path is not None:
        if os.path.dirname(file_path):
            os.makedirs(os.path.dirname(file_path), exist_ok=True)
        plt.savefig(file_path)
        plt.close()


def create_test_target_function(in_dim: int, out_dim: int, n_control_points: int, smoothness: float,
                                rng: np.random.Generator | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """A random smooth map [0, 1]^in_dim -> R^out_dim: a softmax-of-distance (temperature ``smoothness``) blend
    of values uniform in [-3, 3] at control points uniform in [-0.1, 1.1]^in_dim (numpy's global generator
    unless ``rng`` is given, as the published notebooks seed it)."""
    draw = np.random if rng is None else rng
    points = draw.random((n_control_points, in_dim)) * 1.2 - 0.1
    values = draw.random((n_control_points, out_dim)) * 6.0 - 3.0

    def target(x: np.ndarray) -> np.ndarray:
        d = np.linalg.norm(points - np.asarray(x, dtype=np.float64), axis=1)
        w = np.exp(-(d - d.min()) / smoothness)
        return (w / w.sum()) @ values

    return target


def construct_prompt(fun: Callable, in_dim: int, out_dim: int, N: int) -> np.ndarray:
    """The N^in_dim prompt rows [1/N, cell's lower corner, f(cell centre)] of the vec2vec program, cells in
    row-major order of their indices (the query token goes before them)."""
    centres = (np.arange(N) + 0.5) / N
    rows = []
    for idx in itertools.product(range(N), repeat=in_dim):
        idx = np.asarray(idx)
        rows.append(np.concatenate([[1.0 / N], idx / N, np.asarray(fun(centres[idx]), np.float64).reshape(out_dim)]))
    return np.stack(rows)


def is_symbolic(x: Any) -> bool:
    try:
        import sympy
    except ImportError:
        return False
    return isinstance(x, (sympy.Basic, sympy.MatrixBase))


def is_fully_symbolic(x: Any) -> bool:
    """Symbolic with no floating-point atom."""
    if not is_symbolic(x):
        return False
    import sympy

    return not x.atoms(sympy.Float)


def diag_matrices_and_eyes(matrices: Sequence[Any]) -> Matrix:
    """Block-diagonal matrix of the given blocks; an int n stands for the identity of size n."""
    return Matrix.diag(*matrices)
