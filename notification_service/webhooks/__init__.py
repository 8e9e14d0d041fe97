"""The webhook receiver (``notification-service webhooks``): providers' delivery events, verified and recorded."""
