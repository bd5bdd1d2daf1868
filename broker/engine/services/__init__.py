"""Background work of a broker process, one service a module, each started and stopped alone.

`LeaseReaper` expires leases past their deadline, `Scheduler` makes scheduled
deliveries ready when due, `Retention` applies maximum ages and retention, and
`DedupPruner` forgets dedup ids past their window. They share the loop in
`base.Service`; the engine builds them and receives what they change.
"""

from broker.engine.services.base import Outcomes, Service
from broker.engine.services.dedup import DedupPruner
from broker.engine.services.reaper import LeaseReaper
from broker.engine.services.retention import Retention
from broker.engine.services.scheduler import Scheduler

__all__ = ["DedupPruner", "LeaseReaper", "Outcomes", "Retention", "Scheduler", "Service"]
