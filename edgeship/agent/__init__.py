"""The device agent: ``edgeship agent serve`` on an edge device measures engines there with the same harness as the
local validate stage (``server.py``); the validate stage sends engines to it through ``client.py``; both speak the
models of ``protocol.py``."""
