from __future__ import annotations

from django.urls import path

from learners import api

urlpatterns = [
    path("attempts/", api.attempts, name="api-attempts"),
    path("learners/me/mastery/", api.my_mastery, name="api-my-mastery"),
    path("courses/<slug:slug>/mastery/", api.course_mastery, name="api-course-mastery"),
    path("courses/<slug:slug>/items/", api.course_items, name="api-course-items"),
    path("items/<int:item_id>/", api.item_detail, name="api-item"),
]
