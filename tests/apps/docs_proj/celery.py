# Celery's docs: getting-started/next-steps, "proj/celery.py".
from celeriac import Celery

app = Celery("proj", include=["tests.apps.docs_proj.tasks"])

# Optional configuration, see the application user guide.
app.conf.update(
    result_expires=3600,
)
