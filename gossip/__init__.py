"""SWIM-style membership, plus the authenticated frame codec and RPC every layer talks over.

gossip is the bottom layer: it knows node ids and addresses, never files or jobs.
"""
