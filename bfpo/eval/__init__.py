"""Evaluation on the paper's two axes plus over-refusal: discriminative multiple choice by log-likelihood
(``discriminative``, task files in ``tasks`` and ``published``), generation over prompt sets (``generative``)
scored by judges (``judges``, ``lm_judges``), and a per-axis summary naming each score's judge (``report``)."""

from bfpo.eval.discriminative import evaluate_discriminative, score_pairs, task_metrics
from bfpo.eval.generative import (PAPER_SAMPLING, PromptSet, evaluate_generative, generate_responses,
                                  judge_responses, load_advbench, load_alert, load_benign, load_pku_prompts,
                                  load_prompt_file, load_xstest)
from bfpo.eval.judges import (UNPARSEABLE, GroundTruthHelpfulJudge, GroundTruthRefusalJudge, GroundTruthSafetyJudge,
                              GroundTruthWinRateJudge, Judge, JudgeError, RefusalJudge, run_judge, score_verdicts,
                              synthetic_judges)
from bfpo.eval.lm_judges import AnswerReading, ClassifierJudge, WinRateJudge
from bfpo.eval.published import PUBLISHED, load_published
from bfpo.eval.report import format_summary, summarize, write_report
from bfpo.eval.tasks import Question, Task, load_task

__all__ = [
    "PAPER_SAMPLING", "PUBLISHED", "UNPARSEABLE", "AnswerReading", "ClassifierJudge", "GroundTruthHelpfulJudge",
    "GroundTruthRefusalJudge", "GroundTruthSafetyJudge",
    "GroundTruthWinRateJudge", "Judge", "JudgeError", "PromptSet", "Question", "RefusalJudge", "Task",
    "WinRateJudge", "evaluate_discriminative", "evaluate_generative", "format_summary", "generate_responses",
    "judge_responses", "load_advbench", "load_alert", "load_benign", "load_task",
    "load_pku_prompts", "load_prompt_file", "load_published", "load_xstest", "run_judge", "score_pairs",
    "score_verdicts", "summarize", "synthetic_judges", "task_metrics", "write_report",
]
