"""Mutation testing: mutants of a reference solution (generate.py), graded
against an assignment's tests in the sandbox (run.py).

    from xgrader.mutation import generate, mutants_for, run_mutants
"""

from xgrader.mutation.generate import OPERATORS, Mutant, generate, mutants_for

__all__ = ["OPERATORS", "Mutant", "generate", "mutants_for"]
