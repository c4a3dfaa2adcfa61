"""The saga runtime: checkpoints, parked events and the runner of `manage.py myko_sagas`
(docs/architecture.md, "Sagas"). Sagas are declared with `myko_django.saga`
(items/sagas.py)."""
