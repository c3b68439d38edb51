"""Evals (`make eval`): a versioned capsule set run against every registered chat model.

``python -m evals --help`` runs it; evals/README.md says what a capsule is and how items
are scored. The pieces:

- evals.capsules: the capsule file (loading, checking, selecting items);
- evals.checks: normalisation, predicates and the scoring rule of each kind (pure);
- evals.prompts: the request each kind sends (the agent loop's own prompt pieces);
- evals.runner: the engine, the registered models, one call per item through the
  platform's model client;
- evals.sandbox: model-written code runs in code_execution's sandbox;
- evals.report: the JSON report (its shape is documented there) and the console table.
"""
