"""The generated policies against the cluster's current ones: collisions (ours: an update;
anyone else's: overwritten), policies that combine with the new ones, and the changes as
``diff`` computes them."""

from __future__ import annotations

from typing import Any

from analyser.adopting import Collision, adopt
from analyser.evaluation import PolicySet, pod
from analyser.policies import MANAGED_BY_LABEL

WEB = "shop/Deployment/web"
DB = "shop/StatefulSet/db"
PODS = {
    WEB: pod(namespace="shop", labels={"app": "web"}, name=WEB),
    DB: pod(namespace="shop", labels={"app": "db"}, name=DB),
}


def policy(name: str, app: str | None, *, ours: bool = False, **spec: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": "shop"}
    if ours:
        metadata["labels"] = {MANAGED_BY_LABEL[0]: MANAGED_BY_LABEL[1]}
    selector = {"matchLabels": {"app": app}} if app else {}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata,
        "spec": {"podSelector": selector, **spec},
    }


# What analyse would write: db admits web on 5432, web may call db on 5432 (and nothing else).
GENERATED = PolicySet.from_documents(
    [
        policy(
            "db",
            "db",
            policyTypes=["Ingress", "Egress"],
            ingress=[
                {
                    "from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                    "ports": [{"port": 5432}],
                }
            ],
        ),
        policy(
            "web",
            "web",
            policyTypes=["Ingress", "Egress"],
            egress=[
                {"to": [{"podSelector": {"matchLabels": {"app": "db"}}}], "ports": [{"port": 5432}]}
            ],
        ),
    ]
)
WORKLOADS = {DB: "shop/db", WEB: "shop/web"}


def current(*documents: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(f"snapshot: {d['metadata']['name']}", d) for d in documents]


def test_without_current_policies_there_is_nothing_to_compare() -> None:
    adoption = adopt([], GENERATED, WORKLOADS, PODS)
    assert (adoption.current, adoption.collisions, adoption.changes) == ((), (), ())


def test_a_same_named_policy_is_replaced_and_only_someone_else_s_is_overwritten() -> None:
    mine = policy("db", "db", ours=True, policyTypes=["Ingress"])
    theirs = policy("web", "web", policyTypes=["Ingress"], ingress=[{}])
    adoption = adopt(current(mine, theirs), GENERATED, WORKLOADS, PODS)
    assert adoption.current == ("shop/db", "shop/web")
    assert adoption.collisions == (
        Collision("shop/db", DB, True),
        Collision("shop/web", WEB, False),
    )
    assert adoption.overwritten == (Collision("shop/web", WEB, False),)
    # Replaced, so they combine with nothing.
    assert adoption.combined == {}


def test_a_differently_named_policy_selecting_the_pods_combines_and_keeps_its_allowances() -> None:
    open_db = policy("db-open", "db", policyTypes=["Ingress"], ingress=[{}])
    adoption = adopt(current(open_db), GENERATED, WORKLOADS, PODS)
    assert adoption.collisions == ()
    assert adoption.combined == {DB: ("shop/db-open",)}
    # db stays open to everyone (db-open still allows it); web loses everything but db:5432.
    to_db = [c for c in adoption.changes if (c.client, c.server) == (WEB, DB)]
    assert [str(c.newly_denied) for c in to_db] == [
        "all SCTP ports, 1-5431/TCP, 5433-65535/TCP, all UDP ports"
    ]
    # Anything outside the cluster may still reach db: db-open admits everyone.
    assert not [c for c in adoption.changes if c.server == DB and c.client.startswith("ip:")]
    assert all(not c.newly_allowed for c in adoption.changes)


def test_what_a_current_deny_all_denied_and_the_new_policies_allow_is_newly_allowed() -> None:
    deny_all = policy("deny-all", None, policyTypes=["Ingress", "Egress"])
    adoption = adopt(current(deny_all), GENERATED, WORKLOADS, PODS)
    assert adoption.combined == {DB: ("shop/deny-all",), WEB: ("shop/deny-all",)}
    [change] = [c for c in adoption.changes if c.newly_allowed]
    assert (change.client, change.server, str(change.newly_allowed)) == (WEB, DB, "5432/TCP")


def test_a_current_policy_that_cannot_be_read_is_left_out_with_a_note() -> None:
    broken = policy("broken", "db", policyTypes=["Sideways"])
    adoption = adopt(current(broken), GENERATED, WORKLOADS, PODS)
    assert adoption.current == ()
    [note] = adoption.notes
    assert note.startswith("snapshot: broken: left out of the comparison: ")


def test_past_the_pair_cap_the_changes_are_left_to_diff_with_a_note() -> None:
    """Each address block a current policy names is paired with every workload that gets a
    policy, both ways: a tampered snapshot can name any number."""
    many = [{"ipBlock": {"cidr": f"198.51.{n // 256}.{n % 256}/32"}} for n in range(25_000)]
    wide = policy("wide", "db", policyTypes=["Ingress"], ingress=[{"from": many}])
    adoption = adopt(current(wide), GENERATED, WORKLOADS, PODS)
    assert adoption.changes == ()
    assert adoption.combined == {DB: ("shop/wide",)}  # still said
    [note] = adoption.notes
    assert note.startswith("what applying changes is not computed here: 100012 pairs to compare")


def test_changes_are_counted_per_workload_at_either_end() -> None:
    deny_all = policy("deny-all", None, policyTypes=["Ingress", "Egress"])
    adoption = adopt(current(deny_all), GENERATED, WORKLOADS, PODS)
    counted = adoption.by_workload(WORKLOADS)
    assert list(counted) == [WEB, DB]
    # web → db:5432 is newly allowed: both ends count it; nothing else was allowed before.
    assert [(c.client, c.server) for c in counted[DB].gained] == [(WEB, DB)]
    assert [(c.client, c.server) for c in counted[WEB].gained] == [(WEB, DB)]
    assert counted[DB].lost == counted[WEB].lost == 0
