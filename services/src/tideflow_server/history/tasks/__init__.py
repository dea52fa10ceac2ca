"""What the shard's queues run: a fired timer (`timer.fire`) and a delivered outbox task
(`transfer.execute`). The queues in shard/ schedule, retry and acknowledge; these act on the
run, typed against the shard's port like the use cases in api/."""
