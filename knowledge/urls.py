from __future__ import annotations

from django.urls import path

from knowledge import api

urlpatterns = [
    path("courses/", api.course_list, name="api-courses"),
    path("courses/<slug:slug>/documents/", api.course_documents, name="api-course-documents"),
    path("courses/<slug:slug>/search", api.course_search, name="api-course-search"),
    path("courses/<slug:slug>/search/", api.course_search),
    path("documents/<int:document_id>/", api.document_detail, name="api-document"),
]
