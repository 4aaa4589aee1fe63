"""Conversations and messages arrive with the tutoring chat issue."""
