"""The node client: a drop-in for the original push-jobs client."""
