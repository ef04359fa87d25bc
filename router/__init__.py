"""modelplex router: the public port, the cluster view and the placement policy."""
