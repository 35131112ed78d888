"""What scores an answer: text metrics, clinical checks against the registry, and the judges.

Shared by training-time validation (the callbacks), pair selection and the evaluation stage,
so it sits below all three.
"""
