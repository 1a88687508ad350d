"""Shared networking below every layer: the authenticated frame codec (``wire``), per-connection
sessions (``session``) and request/response over TCP (``rpc``). Gossip uses the frame codec for its
UDP datagrams; HyDFS, the controller and RainStorm use the RPC."""
