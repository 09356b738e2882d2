"""One failure type for every way of delivering, so the outbox retries them all alike."""


class DeliveryError(Exception):
    """A delivery did not happen (peer down, refused, bad answer); the message names the peer."""
