"""Pure helpers of the lab's shells: which namespaces are leftovers, how a pod's resolver
expands names, and when a run did not behave as planned."""

from __future__ import annotations

import os

from lab import netns, running, traffic
from lab.plans import read_plan


def test_leftovers_are_namespaces_of_runs_that_are_gone() -> None:
    mine = f"nps-{os.getpid()}-node"
    alive = "nps-1-p0"  # pid 1 is always there
    dead = "nps-4194999-p3"  # above the kernel's largest pid
    names = [mine, alive, dead, "nps-garbage", "someone-elses", "nps-1x-p0"]
    assert netns.leftovers(names, own_pid=os.getpid()) == [mine, dead, "nps-garbage", "nps-1x-p0"]


def test_resolver_tries_the_search_path_first_for_short_names() -> None:
    resolver = traffic.Resolver("10.96.0.10", ["shop.svc.cluster.local", "svc.cluster.local"])
    assert resolver.candidates("cart") == [
        "cart.shop.svc.cluster.local",
        "cart.svc.cluster.local",
        "cart",
    ]
    many_dots = "a.b.c.d.e.example.com"
    assert resolver.candidates(many_dots)[0] == many_dots


def test_unmet_expectations_name_the_call_and_what_happened() -> None:
    plan = read_plan(
        "p.yaml",
        """
calls:
  - {from: a/Deployment/web, to: api:80}
  - {from: a/Deployment/web, to: api:81, expect: refused}
  - {from: a/Deployment/web, to: nope:80, expect: nxdomain}
""",
    )
    totals = [
        {
            "attempts": 3,
            "ok": 0,
            "refused": 0,
            "nxdomain": 0,
            "failed": 3,
            "errors": ["TimeoutError: "],
        },
        {"attempts": 3, "ok": 0, "refused": 3, "nxdomain": 0, "failed": 0, "errors": []},
        {"attempts": 2, "ok": 1, "refused": 0, "nxdomain": 1, "failed": 0, "errors": []},
    ]
    unmet = running.unmet_expectations(plan, totals)
    assert unmet == [
        "a/Deployment/web → api:80/TCP never succeeded (attempts 3, ok 0, refused 0, "
        "nxdomain 0, failed 3; TimeoutError: )",
        "a/Deployment/web → nope:80/TCP was meant not to resolve (attempts 2, ok 1, refused 0, "
        "nxdomain 1, failed 0)",
    ]
