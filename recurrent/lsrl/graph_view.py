"""The published language's graph view of a program: a ``networkx.DiGraph`` over the nodes, an edge from each
input to its consumer (a ``Concat`` that reads the same node twice gets one edge, as there)."""

from __future__ import annotations

from typing import Any

from recurrent.errors import CompileError


def node_graph(output: Any):
    try:
        import networkx as nx
    except ImportError as e:  # pinned in setup.py; a stripped environment may lack it
        raise CompileError("graph(): needs networkx (pip install networkx==3.6.1)") from e
    graph = nx.DiGraph()
    graph.add_node(output)
    stack, seen = [output], {output.uid}
    while stack:
        node = stack.pop()
        for inp in node.inputs:
            graph.add_edge(inp, node)
            if inp.uid not in seen:
                seen.add(inp.uid)
                stack.append(inp)
    return graph


def is_path_graph(graph) -> bool:
    """Whether the DAG is one chain input -> ... -> output (what the published compiler produces)."""
    if graph.number_of_nodes() == 1:
        return True
    degrees_in = [d for _, d in graph.in_degree()]
    degrees_out = [d for _, d in graph.out_degree()]
    return (all(d <= 1 for d in degrees_in) and all(d <= 1 for d in degrees_out)
            and degrees_in.count(0) == 1 and degrees_out.count(0) == 1)
