"""Rollouts: moving an upstream's traffic from one version to another, step by step.

    machine.py           the pure `transition(spec, status, event) -> Decision`
    writer.py            the one compare-and-swap writer of statuses (engine and verbs)
    engine.py            the leader's driver: ticks, fleet ACKs, analysis → transitions
    gate.py              endpoint health a step waits for before it counts
    traffic.py           statuses → each upstream's split (what translate is given)
    analysis_reports.py  each replica's request counts and endpoint health in etcd, and
                         the leader's analysis over their sum
"""
