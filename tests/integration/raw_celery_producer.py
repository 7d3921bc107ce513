"""A producer that does not import Quorum: plain Celery sends `quorum.submit` (the example of
docs/defined-tasks.md). Run as `python raw_celery_producer.py REDIS_URL SPEC_JSON`; prints
{"run_id": ...} or, for a refused spec, {"error": <exception type>, "message": ...}, and
whether anything imported Quorum."""

import json
import sys

from celery import Celery

broker = sys.argv[1]
spec = json.loads(sys.argv[2])

app = Celery(broker=broker, backend=broker)
result = app.send_task("quorum.submit", args=[spec], queue="quorum.control")
try:
    answer = {"run_id": result.get(timeout=30)}
except Exception as exc:  # the job failed: the spec was refused
    answer = {"error": type(exc).__name__, "message": str(exc)}
answer["quorum_imported"] = any(name.split(".")[0] == "quorum" for name in sys.modules)
print(json.dumps(answer))
