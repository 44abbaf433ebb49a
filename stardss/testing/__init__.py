"""Stand-ins for tests and benchmarks: tiny random-weight models of the guardrail families
with their real chat templates. Production code never imports this package."""
