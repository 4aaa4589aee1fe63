"""Back office: platform registrations (administrators), linked Moodle courses with their roster
sync and the grade passback setting (instructors of the course), passback diagnostics."""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from lti_tool.models import LtiDeployment, LtiRegistration

from knowledge.admin import CourseScopedAdmin
from lti import services
from lti.models import CourseLink, Grading, Identity, ScoreSync
from lti.platform import PlatformError

# Where Moodle serves its LTI endpoints, under its wwwroot (the issuer).
MOODLE_PATHS = {
    "auth_url": "/mod/lti/auth.php",
    "token_url": "/mod/lti/token.php",
    "keyset_url": "/mod/lti/certs.php",
}


def tool_urls(request: HttpRequest, registration_uuid: UUID | str) -> list[tuple[str, str]]:
    """The tool's URLs as Moodle's tool configuration names them."""
    launch = request.build_absolute_uri(reverse("lti:launch"))
    return [
        ("Tool URL", launch),
        ("Public keyset URL", request.build_absolute_uri(reverse("lti:jwks"))),
        (
            "Initiate login URL",
            request.build_absolute_uri(reverse("lti:init", args=[registration_uuid])),
        ),
        ("Redirection URI(s)", launch),
        ("Content Selection URL (deep linking)", launch),
    ]


class RegistrationForm(forms.ModelForm):
    class Meta:
        model = LtiRegistration
        fields = [
            "name",
            "uuid",
            "issuer",
            "client_id",
            "auth_url",
            "token_url",
            "keyset_url",
            "audience",
            "is_active",
        ]
        labels = {
            "issuer": "Platform ID (issuer)",
            "auth_url": "Authentication request URL",
            "token_url": "Access token URL",
            "keyset_url": "Public keyset URL",
        }
        help_texts = {
            "issuer": "Exactly as Moodle shows it: its wwwroot, e.g. https://moodle.example.edu "
            "(no trailing slash).",
            "auth_url": "Blank: <issuer>/mod/lti/auth.php (Moodle).",
            "token_url": "Blank: <issuer>/mod/lti/token.php (Moodle).",
            "keyset_url": "Blank: <issuer>/mod/lti/certs.php (Moodle).",
            "uuid": "Part of the Initiate login URL: keep it as it is.",
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in MOODLE_PATHS:
            self.fields[name].required = False

    def clean_issuer(self) -> str:
        issuer = str(self.cleaned_data["issuer"]).strip()
        if issuer.endswith("/"):
            raise forms.ValidationError(
                "Moodle's Platform ID has no trailing slash; copy it exactly."
            )
        return issuer

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        issuer = data.get("issuer")
        for name, path in MOODLE_PATHS.items():
            if not data.get(name):
                if not issuer:
                    self.add_error(name, "Required (or give the issuer to use Moodle's).")
                else:
                    data[name] = issuer + path
        return data


class DeploymentInline(admin.TabularInline):
    model = LtiDeployment
    fields = ["deployment_id", "is_active"]
    extra = 1
    verbose_name = "deployment (Moodle's Deployment ID)"

    def formfield_for_dbfield(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "is_active":
            kwargs["initial"] = True  # django-lti's default is inactive
        return super().formfield_for_dbfield(db_field, request, **kwargs)


admin.site.unregister(LtiRegistration)


@admin.register(LtiRegistration)
class RegistrationAdmin(admin.ModelAdmin):
    form = RegistrationForm
    change_form_template = "lti/admin/registration_change_form.html"
    list_display = ["name", "issuer", "client_id", "deployment_ids", "is_active"]
    inlines = [DeploymentInline]

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        # The URLs must be pasted into Moodle before Moodle shows the client id to paste here,
        # so the add form shows them already, for the UUID it will save.
        chosen = request.POST.get("uuid") or str(uuid4())
        request.lti_registration_uuid = chosen  # type: ignore[attr-defined]
        context = {"tool_urls": tool_urls(request, chosen), **(extra_context or {})}
        return super().add_view(request, form_url, context)

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        initial = dict(super().get_changeform_initial_data(request))
        initial["uuid"] = getattr(request, "lti_registration_uuid", None) or str(uuid4())
        return initial

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        registration = self.get_object(request, object_id)
        context = dict(extra_context or {})
        if registration is not None:
            context["tool_urls"] = tool_urls(request, registration.uuid)
        return super().change_view(request, object_id, form_url, context)

    def response_add(
        self, request: HttpRequest, obj: LtiRegistration, post_url_continue: str | None = None
    ) -> HttpResponse:
        response = super().response_add(request, obj, post_url_continue)
        if "_addanother" in request.POST or "_popup" in request.POST:
            return response
        # Back to the registration, where the URLs stay in view.
        return HttpResponseRedirect(reverse("admin:lti_tool_ltiregistration_change", args=[obj.pk]))

    @admin.display(description="deployment ids")
    def deployment_ids(self, registration: LtiRegistration) -> str:
        return ", ".join(
            d.deployment_id + ("" if d.is_active else " (inactive)")
            for d in registration.deployments.all()
        )


@admin.register(CourseLink)
class CourseLinkAdmin(CourseScopedAdmin):
    list_display = ["course", "platform_course", "platform", "roster_synced_at"]
    list_select_related = ["course", "context__deployment__registration"]
    readonly_fields = ["course", "context", "created_at", "roster_synced_at"]
    actions = ["sync_roster"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # links come from launches

    @admin.display(description="Moodle course")
    def platform_course(self, link: CourseLink) -> str:
        return str(link.context)

    @admin.display(description="platform")
    def platform(self, link: CourseLink) -> str:
        return str(link.registration)

    @admin.action(description="Sync the roster from Moodle (NRPS)", permissions=["view"])
    def sync_roster(self, request: HttpRequest, queryset: QuerySet[CourseLink]) -> None:
        for link in queryset.select_related("context__deployment__registration", "course"):
            try:
                result = services.sync_roster(link=link)
            except PlatformError as exc:
                self.message_user(request, f"{link.course}: {exc}", messages.ERROR)
                continue
            self.message_user(
                request,
                f"{link.course}: {result.members} members in Moodle; {result.added} added, "
                f"{result.changed} changed role, {result.removed} removed.",
                messages.SUCCESS,
            )


@admin.register(Grading)
class GradingAdmin(CourseScopedAdmin):
    list_display = ["course", "mode"]
    fields = ["course", "mode"]


@admin.register(ScoreSync)
class ScoreSyncAdmin(admin.ModelAdmin):
    """Diagnostics of the grade passback, for administrators."""

    list_display = ["user", "column", "posted_score", "posted_at", "failures", "retry_at"]
    list_filter = ["failures"]
    readonly_fields = [f.name for f in ScoreSync._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Identity)
class IdentityAdmin(admin.ModelAdmin):
    list_display = ["user", "subject", "issuer", "last_launch_at"]
    search_fields = ["user__username", "subject"]
    readonly_fields = ["issuer", "subject", "user", "created_at", "last_launch_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
