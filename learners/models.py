"""How well each learner knows each skill. Attempts, BKT mastery and items arrive with the
learner-model issue; the app is installed now so migrations start from the platform's."""
