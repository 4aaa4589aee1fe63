"""The instructors' back office. Every queryset is limited to the courses the user teaches."""

from __future__ import annotations

from typing import Any, cast

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.models import User
from django.db.models import Model, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from knowledge import services
from knowledge.access import taught_courses
from knowledge.models import Chunk, ChunkSkill, Course, Document, Enrollment, Skill


class CourseScopedAdmin(admin.ModelAdmin):
    """Shows an instructor only rows of their own courses; superusers see everything."""

    course_path = "course"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        return queryset.filter(**{f"{self.course_path}__in": taught_courses(request.user)})

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "course" and not request.user.is_superuser:
            kwargs["queryset"] = taught_courses(request.user)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def _owns(self, request: HttpRequest, obj: Model | None) -> bool:
        return obj is None or self.get_queryset(request).filter(pk=obj.pk).exists()

    def has_view_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return super().has_view_permission(request, obj) and self._owns(request, obj)

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return super().has_change_permission(request, obj) and self._owns(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return super().has_delete_permission(request, obj) and self._owns(request, obj)


class EnrollmentInline(admin.TabularInline):
    model = Enrollment
    extra = 0
    raw_id_fields = ["user"]


@admin.register(Course)
class CourseAdmin(admin.ModelAdmin):
    list_display = ["title", "slug", "members", "documents_ready", "skill_count"]
    search_fields = ["title", "slug"]
    prepopulated_fields = {"slug": ["title"]}
    inlines = [EnrollmentInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Course]:
        queryset = super().get_queryset(request)
        return queryset if request.user.is_superuser else queryset & taught_courses(request.user)

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Courses come from an administrator or from Moodle; instructors manage their own.
        return bool(request.user.is_superuser)

    def _owns(self, request: HttpRequest, obj: Course | None) -> bool:
        return obj is None or self.get_queryset(request).filter(pk=obj.pk).exists()

    def has_view_permission(self, request: HttpRequest, obj: Course | None = None) -> bool:
        return super().has_view_permission(request, obj) and self._owns(request, obj)

    def has_change_permission(self, request: HttpRequest, obj: Course | None = None) -> bool:
        return super().has_change_permission(request, obj) and self._owns(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Course | None = None) -> bool:
        return bool(request.user.is_superuser)

    @admin.display(description="members")
    def members(self, course: Course) -> int:
        return course.enrollments.count()

    @admin.display(description="documents ready")
    def documents_ready(self, course: Course) -> str:
        ready = course.documents.filter(status=Document.Status.READY).count()
        return f"{ready} / {course.documents.count()}"

    @admin.display(description="skills")
    def skill_count(self, course: Course) -> int:
        return course.skills.count()


@admin.register(Skill)
class SkillAdmin(CourseScopedAdmin):
    list_display = ["name", "course", "prerequisite_names", "chunk_count"]
    list_filter = ["course"]
    search_fields = ["name", "description"]
    filter_horizontal = ["prerequisites"]
    actions = ["retag_course"]

    def formfield_for_manytomany(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "prerequisites" and not request.user.is_superuser:
            kwargs["queryset"] = Skill.objects.filter(course__in=taught_courses(request.user))
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    @admin.display(description="prerequisites")
    def prerequisite_names(self, skill: Skill) -> str:
        return ", ".join(prerequisite.name for prerequisite in skill.prerequisites.all()) or "-"

    @admin.display(description="passages")
    def chunk_count(self, skill: Skill) -> int:
        return skill.chunk_links.count()

    @admin.action(description="Re-tag the courses' passages with their skills")
    def retag_course(self, request: HttpRequest, queryset: QuerySet[Skill]) -> None:
        for course in Course.objects.filter(skills__in=queryset).distinct():
            made = services.tag_chunks(course=course)
            self.message_user(request, f"{course}: {made} passage-skill links made.")


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault(
            "widget",
            MultipleFileInput(attrs={"accept": ".pdf,.docx,.html,.htm,.md,.markdown,.txt"}),
        )
        super().__init__(*args, **kwargs)

    def clean(self, data: Any, initial: Any = None) -> Any:
        single = super().clean
        if isinstance(data, (list, tuple)):
            return [single(item, initial) for item in data]
        return [single(data, initial)]


class UploadForm(forms.Form):
    course = forms.ModelChoiceField(queryset=Course.objects.none())
    documents = MultipleFileField(
        help_text="PDF, DOCX, HTML, Markdown or plain text; several at once."
    )

    def __init__(self, *args: Any, courses: QuerySet[Course], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["course"].queryset = courses  # type: ignore[attr-defined]
        if courses.count() == 1:
            self.fields["course"].initial = courses.first()


class ChunkInline(admin.TabularInline):
    model = Chunk
    extra = 0
    fields = ["ordinal", "locator", "token_count", "text"]
    readonly_fields = ["ordinal", "locator", "token_count", "text"]
    show_change_link = True
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# What ingestion records about a document: shown, never edited.
_DOCUMENT_FACTS = (
    "course",
    "original_filename",
    "file",
    "content_hash",
    "size_bytes",
    "status",
    "error",
    "chunks_done",
    "chunks_total",
    "uploaded_by",
    "created_at",
    "started_at",
    "finished_at",
)


@admin.register(Document)
class DocumentAdmin(CourseScopedAdmin):
    list_display = [
        "title",
        "status_badge",
        "progress_bar",
        "original_filename",
        "course",
        "created_at",
    ]
    list_filter = ["course", "status"]
    search_fields = ["title", "original_filename"]
    readonly_fields = _DOCUMENT_FACTS
    fields = ("title", *_DOCUMENT_FACTS)
    inlines = [ChunkInline]
    actions = ["reindex", "delete_documents"]

    class Media:
        js = ["knowledge/admin_progress.js"]
        css = {"all": ["knowledge/admin.css"]}

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # ours removes the stored files as well
        return actions

    def get_urls(self) -> list[URLPattern]:
        upload = path(
            "upload/",
            self.admin_site.admin_view(self.upload_view),
            name="knowledge_document_upload",
        )
        return [upload, *super().get_urls()]

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        return HttpResponseRedirect(reverse("admin:knowledge_document_upload"))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return super().has_add_permission(request) and (
            request.user.is_superuser or taught_courses(request.user).exists()
        )

    def upload_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_add_permission(request):
            return render(request, "admin/knowledge/forbidden.html", status=403)
        courses = (
            Course.objects.all() if request.user.is_superuser else taught_courses(request.user)
        )
        form = UploadForm(request.POST or None, request.FILES or None, courses=courses)
        oversized = getattr(request, "oversized_files", [])
        if request.method == "POST" and oversized:
            form.add_error(
                None, f"Over the upload size limit, not uploaded: {', '.join(oversized)}"
            )
        elif request.method == "POST" and form.is_valid():
            course = form.cleaned_data["course"]
            for upload in form.cleaned_data["documents"]:
                try:
                    result = services.add_document(
                        course=course,
                        filename=upload.name,
                        content=upload,
                        uploaded_by=cast(User, request.user),
                    )
                except services.KnowledgeError as exc:
                    self.message_user(request, exc.message, messages.ERROR)
                    continue
                if result.created:
                    self.message_user(
                        request, f"{upload.name}: queued for ingestion.", messages.SUCCESS
                    )
                else:
                    self.message_user(
                        request,
                        f"{upload.name}: identical to {result.document.title!r}, kept as is.",
                        messages.INFO,
                    )
            return HttpResponseRedirect(
                reverse("admin:knowledge_document_changelist") + f"?course__id__exact={course.pk}"
            )
        context = {
            **self.admin_site.each_context(request),
            "title": "Upload course material",
            "form": form,
            "opts": self.model._meta,
            "media": self.media + form.media,
        }
        return TemplateResponse(request, "admin/knowledge/upload.html", context)

    @admin.display(description="status", ordering="status")
    def status_badge(self, document: Document) -> str:
        return format_html(
            '<span class="doc-status doc-status-{}" title="{}">{}</span>',
            document.status,
            document.error,
            document.get_status_display() + (f": {document.error}" if document.error else ""),
        )

    @admin.display(description="progress")
    def progress_bar(self, document: Document) -> str:
        percent = round(document.progress() * 100)
        return format_html(
            '<div class="doc-progress" data-document="{}" data-finished="{}">'
            '<progress max="100" value="{}"></progress> <span>{} / {} chunks</span></div>',
            document.pk,
            "1" if document.is_finished() else "0",
            percent,
            document.chunks_done,
            document.chunks_total or "?",
        )

    @admin.action(description="Re-index selected documents")
    def reindex(self, request: HttpRequest, queryset: QuerySet[Document]) -> None:
        for document in queryset:
            services.reindex_document(document=document)
        self.message_user(request, f"{queryset.count()} document(s) queued for re-indexing.")

    @admin.action(description="Delete selected documents and their passages")
    def delete_documents(self, request: HttpRequest, queryset: QuerySet[Document]) -> None:
        count = 0
        for document in queryset:
            if self.has_delete_permission(request, document):
                services.delete_document(document=document)
                count += 1
        self.message_user(request, f"{count} document(s) deleted.")


class ChunkSkillInline(admin.TabularInline):
    model = ChunkSkill
    extra = 1
    fields = ["skill", "score", "source"]
    readonly_fields = ["score", "source"]

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "skill" and not request.user.is_superuser:
            kwargs["queryset"] = Skill.objects.filter(course__in=taught_courses(request.user))
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


@admin.register(Chunk)
class ChunkAdmin(CourseScopedAdmin):
    list_display = ["__str__", "locator", "token_count", "skill_names"]
    list_filter = ["course", "document"]
    search_fields = ["text", "locator"]
    fields = ["document", "ordinal", "locator", "page", "token_count", "text"]
    readonly_fields = ["document", "ordinal", "locator", "page", "token_count", "text"]
    inlines = [ChunkSkillInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="skills")
    def skill_names(self, chunk: Chunk) -> str:
        return ", ".join(skill.name for skill in chunk.skills.all()) or "-"

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        # A link an instructor adds or keeps by editing is theirs: re-tagging leaves it alone.
        for instance in formset.save(commit=False):
            instance.source = ChunkSkill.Source.INSTRUCTOR
            instance.save()
        for obj in formset.deleted_objects:
            obj.delete()
