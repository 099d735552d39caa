"""Retries: ``self.retry()`` and ``autoretry_for``, through the broker's delayed delivery.

The task is published again with the same id, ``retries + 1`` and an eta;
the worker never sleeps on a retry. Backoff follows the task's
``retry_backoff``, ``retry_backoff_max`` and ``retry_jitter`` options.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime

from ... import states
from ...errors import MessageTooLarge, Retry
from ...execution import Outcome, autoretry_countdown
from ...protocol import Message, Outgoing, TaskBody
from ...sending import announce, check_message_size
from ...signals import before_task_publish
from ..context import WorkerContext
from ..job import Job
from .base import Middleware


class Retries(Middleware):
    async def after_task(self, ctx: WorkerContext, job: Job, outcome: Outcome) -> Outcome:
        if outcome.state == states.FAILURE and outcome.exc is not None:
            countdown = autoretry_countdown(job.task, outcome.exc, job.request.retries)
            if countdown is None:
                return outcome
            outcome = replace(
                outcome,
                state=states.RETRY,
                retry_countdown=countdown,
                exc=Retry(exc=outcome.exc, when=countdown),
            )
        if outcome.state != states.RETRY:
            return outcome
        retry = outcome.exc if isinstance(outcome.exc, Retry) else Retry()
        countdown = outcome.retry_countdown or 0.0
        try:
            await self._republish(ctx, job, retry, countdown)
        except MessageTooLarge as exc:  # the new arguments: the task fails with why
            return Outcome(states.FAILURE, exc=exc, runtime=outcome.runtime)
        return outcome

    async def _republish(
        self, ctx: WorkerContext, job: Job, retry: Retry, countdown: float
    ) -> None:
        message = job.message
        not_before = time.time() + countdown
        headers = dict(message.headers)
        headers["retries"] = job.request.retries + 1
        headers["eta"] = datetime.fromtimestamp(not_before, UTC).isoformat()
        body_bytes = message.body
        queue = str(retry.options.get("queue") or job.delivery.queue)
        new_arguments = retry.new_args is not None or retry.new_kwargs is not None
        if new_arguments or before_task_publish.receivers:
            body = TaskBody(
                retry.new_args if retry.new_args is not None else job.body.args,
                retry.new_kwargs if retry.new_kwargs is not None else job.body.kwargs,
                job.body.callbacks,
                job.body.errbacks,
                job.body.chain,
                job.body.chord,
            )
            payload = body.to_payload()
            if before_task_publish.receivers:  # as a Celery worker's retry: apply_async's
                before_task_publish.send(
                    sender=job.name,
                    body=payload,
                    exchange="",
                    routing_key=queue,
                    headers=headers,
                    properties=dict(message.properties),
                    declare=[queue],
                    retry_policy={"max_retries": 0},
                )
            # Encoded as the message was, since its content type goes with it.
            body_bytes, _, _ = ctx.codec.dumps(payload, message.content_type)
            check_message_size(ctx.app.conf.task_message_max_size, job.name, body_bytes)
        priority = int(retry.options.get("priority", message.priority) or 0)
        new = Message(
            headers, body_bytes, message.content_type, message.content_encoding, message.properties
        )
        broker = await ctx.connections.abroker()
        batch = [Outgoing(queue, new, priority, not_before if countdown > 0 else None)]
        await broker.publish(batch)
        await announce(ctx.app, broker, batch)
