"""Multi-host tests: one network namespace per host on a bridge, faults with iptables (harness.py)."""
