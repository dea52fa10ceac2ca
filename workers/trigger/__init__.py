"""tideflow-trigger: an HTTP service that maps authenticated webhooks to SignalWithStartRun or
PublishEvent by a route table in YAML. Run it with `python -m workers.trigger`."""
