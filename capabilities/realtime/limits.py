"""The realtime capability's own limits, the same for every tenant. The profile's limits
(the largest message, publishes a minute) come from the effective policy."""

# Listeners of one tenant connected to one server process at once (all its channels).
# Each is a websocket and a channel-layer subscription; past this, new ones are refused.
MAX_LISTENERS_PER_TENANT = 1000

# Seconds a publish waits for the channel layer (Redis) to take the message.
PUBLISH_TIMEOUT_SECONDS = 5
