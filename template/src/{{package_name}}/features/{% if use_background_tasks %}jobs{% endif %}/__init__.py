"""Background jobs: the jobs table is the queue, and runners claim jobs with leases
(docs/jobs.md)."""
