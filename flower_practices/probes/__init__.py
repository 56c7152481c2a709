"""Broker probes polled in the background: queue lengths, consumers, workers' queues."""
