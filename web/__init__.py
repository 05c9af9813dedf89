"""The web studio beside the bot: the painter, the gallery, and health and metrics endpoints."""
