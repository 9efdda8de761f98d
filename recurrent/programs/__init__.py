"""The paper's LSRL programs with their prompt builders and ideal answers.

``vec2vec`` (continuous function approximation, Listing 1), ``tok2tok`` (dictionary lookup, Listing 2),
``counting`` (more ones than zeros; t mod d). Every program takes a conditional ``mode`` (see
``conditionals``) so gated and non-gated constructions can be compared.
"""

from recurrent.programs.conditionals import MODES, conditional
from recurrent.programs.counting import modulo_counter_program, ones_vs_zeros_program
from recurrent.programs.tok2tok import Tok2TokSpec, tok2tok_answers, tok2tok_program, tok2tok_prompts
from recurrent.programs.vec2vec import Vec2VecSpec, vec2vec_ideal, vec2vec_program, vec2vec_prompts

__all__ = [
    "MODES",
    "Tok2TokSpec",
    "Vec2VecSpec",
    "conditional",
    "modulo_counter_program",
    "ones_vs_zeros_program",
    "tok2tok_answers",
    "tok2tok_program",
    "tok2tok_prompts",
    "vec2vec_ideal",
    "vec2vec_program",
    "vec2vec_prompts",
]
