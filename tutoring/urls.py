from __future__ import annotations

from django.urls import path

from tutoring import views

app_name = "tutoring"

urlpatterns = [
    path("courses/<slug:slug>/", views.course_page, name="course"),
    path("courses/<slug:slug>/conversations/", views.new_conversation, name="new-conversation"),
    path("chat/<int:conversation>/", views.chat_page, name="chat"),
]
