"""Step: after a rotation (:func:`matchenv.operator.steps.credentials.ensure_credentials` switched the workers to the
environment's other broker user), the previous user goes once no worker pod runs with it: the Deployment's template
carries the Secrets as they are now, and every pod of it (none terminating) does too. Until then its connections
keep working, so no worker is refused mid-message."""

from __future__ import annotations

from matchenv.naming import SECRETS_HASH_ANNOTATION
from matchenv.operator import builders
from matchenv.operator.context import Context, Services
from matchenv.operator.kube import Obj
from matchenv.operator.steps.topology import TopologyOutcome
from matchenv.operator.steps.workers import database_problem
from matchenv.topology.client import BrokerError
from matchenv.topology.planner import DeleteUser


def retire_previous_user(s: Services, ctx: Context, topology: TopologyOutcome) -> Obj | None:
    """status.credentials after removing the previous user when no pod uses it (tried again each converge)."""
    previous, status = topology.previous_user, topology.credentials
    if previous is None or status is None or topology.refused or not workers_moved_on(s, ctx, topology):
        return status
    try:
        client = s.clients.get(s.connection_for(ctx.env, ctx.spec, ctx.prefetched))
        s.apply(ctx, client, (DeleteUser(ctx.desired.vhost, previous),), announce=False)
    except BrokerError as exc:  # the next converge tries again; the Warning only when the answer is a new one
        problem = f"cannot remove broker user {previous} yet: {exc}"
        if (ctx.old_status.get("credentials") or {}).get("previousUserProblem") != problem:
            s.event(ctx.env, "BrokerUserNotRetired", problem, "Warning")
        return {**status, "previousUserProblem": problem}
    s.event(ctx.env, "BrokerUserRetired", f"removed broker user {previous}: no worker pod runs with it any more")
    return {**status, "previousUser": None}


def workers_moved_on(s: Services, ctx: Context, topology: TopologyOutcome) -> bool:
    """Whether every worker pod (and the Deployment's template) carries the Secrets as they are now."""
    _, db_secret = database_problem(s, ctx)
    current = builders.secret_data_hash(topology.secret_data, (db_secret or {}).get("data"))
    deployment = s.kube.get_deployment(ctx.namespace, ctx.names.deployment)
    if deployment is None:
        return True  # no workers: nobody uses it (a Deployment made again reads the Secret as it is now)
    template = (((deployment.get("spec") or {}).get("template") or {}).get("metadata") or {})
    if (template.get("annotations") or {}).get(SECRETS_HASH_ANNOTATION) != current:
        return False
    return all(not pod["metadata"].get("deletionTimestamp")
               and (pod["metadata"].get("annotations") or {}).get(SECRETS_HASH_ANNOTATION) == current
               for pod in s.kube.list_pods(ctx.namespace, ctx.names.selector))
