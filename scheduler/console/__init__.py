"""The operations console: pages (views/), live pushes (relay, consumers, routing)."""
