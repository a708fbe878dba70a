"""Tuning: the records store (records.py: where records live, which apply to a build) and the
tuning run (run.py: `edgecompile tune`, MetaSchedule through edgecompile.backend.metaschedule)."""
