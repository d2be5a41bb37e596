"""Failure kinds, by whose fault they are.

- AssignmentError: the payload names no usable assignment (unknown, escaping the
  handlers root, misconfigured). Answered at once with a clear error result.
- SubmissionError: the student's upload cannot be used (bad zip, broken
  notebook). A graded result with 0 points and the reason.
- InfraError: the grader could not do its job (sandbox failed to start, handler
  crashed). Retried a bounded number of times, then "could not be graded".
Student code that is wrong, crashes or times out is none of these: it is a
normal graded result.
"""


class AssignmentError(Exception):
    pass


class SubmissionError(Exception):
    pass


class InfraError(Exception):
    pass
