"""LTI 1.3 registrations and launches arrive with the Moodle integration issue."""
