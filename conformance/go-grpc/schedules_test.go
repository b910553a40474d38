// Export schedules from Go: the five schedule RPCs on a schedule of the emulator's channels whose
// windows are already due, the jobs it starts read with ListExportJobs, and its errors read with
// status.FromError(err).Details().
package conformance

import (
	"context"
	"fmt"
	"reflect"
	"sort"
	"testing"
	"time"

	pb "github.com/stream-export/stream-export/gen/go/streamexport/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// scheduleChannels are what a schedule's jobs export: two of the emulator's channels, one shard
// each, quick to run.
var scheduleChannels = [][2]string{{"messaging", "general"}, {"messaging", "dm-a"}}

// micros is a Timestamp in microseconds since the epoch.
func micros(value *timestamppb.Timestamp) int64 {
	return value.GetSeconds()*1_000_000 + int64(value.GetNanos())/1_000
}

// scheduleJobs reads every page of ListExportJobs and keeps the jobs of one schedule.
func scheduleJobs(t *testing.T, scheduleID string) []*pb.ExportJob {
	t.Helper()
	var jobs []*pb.ExportJob
	seen := map[string]bool{}
	for pages, token := 0, ""; ; pages++ {
		if pages == 1000 {
			t.Fatal("ListExportJobs: more than 1000 pages")
		}
		page, err := client.ListExportJobs(ctx(t), &pb.ListExportJobsRequest{PageSize: 100, PageToken: token})
		must(t, err, "ListExportJobs")
		for _, job := range page.GetJobs() {
			if job.GetScheduleId() != scheduleID {
				continue
			}
			if seen[job.GetJobId()] {
				t.Fatalf("job %s listed twice", job.GetJobId())
			}
			seen[job.GetJobId()] = true
			jobs = append(jobs, job)
		}
		if token = page.GetNextPageToken(); token == "" {
			return jobs
		}
	}
}

// checkWindows checks that the jobs of a schedule tile its windows from start_time, one job per
// window, no gap and no overlap; returns them in window order.
func checkWindows(t *testing.T, schedule *pb.ExportSchedule, jobs []*pb.ExportJob) []*pb.ExportJob {
	t.Helper()
	sorted := append([]*pb.ExportJob(nil), jobs...)
	sort.Slice(sorted, func(i, j int) bool {
		return micros(sorted[i].GetRequest().GetMessagesSince()) < micros(sorted[j].GetRequest().GetMessagesSince())
	})
	start := micros(schedule.GetStartTime())
	step := schedule.GetInterval().AsDuration().Microseconds()
	for k, job := range sorted {
		since, until := micros(job.GetRequest().GetMessagesSince()), micros(job.GetRequest().GetMessagesUntil())
		if want := start + int64(k)*step; since != want {
			t.Fatalf("window %d starts at %d µs, want %d", k, since, want)
		}
		if until != since+step-1 {
			t.Fatalf("window %d ends at %d µs, want 1 µs before the next (%d)", k, until, since+step)
		}
		if k+1 < len(sorted) && until != micros(sorted[k+1].GetRequest().GetMessagesSince())-1 {
			t.Fatalf("window %d ends at %d µs, the next starts at %d µs", k, until, micros(sorted[k+1].GetRequest().GetMessagesSince()))
		}
		if want := fmt.Sprintf("schedule:%s:window:%d", schedule.GetScheduleId(), since); job.GetRequest().GetRequestId() != want {
			t.Errorf("window %d's request_id %q, want %q", k, job.GetRequest().GetRequestId(), want)
		}
		if job.GetOwner() != schedule.GetOwner() {
			t.Errorf("window %d's job is %q's, want the schedule owner's (%q)", k, job.GetOwner(), schedule.GetOwner())
		}
	}
	return sorted
}

// waitForScheduleJobs waits, up to 10 s, until the schedule has started count jobs.
func waitForScheduleJobs(t *testing.T, scheduleID string, count int) []*pb.ExportJob {
	t.Helper()
	end := time.Now().Add(10 * time.Second)
	for {
		jobs := scheduleJobs(t, scheduleID)
		if len(jobs) >= count {
			return jobs
		}
		if time.Now().After(end) {
			t.Fatalf("%d jobs of the schedule after 10 s, want %d", len(jobs), count)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// deleteOnCleanup stops a schedule that a failed test would leave firing (it may be deleted already).
func deleteOnCleanup(t *testing.T, scheduleID string) {
	t.Cleanup(func() {
		c, cancel := context.WithTimeout(context.Background(), deadline)
		defer cancel()
		client.DeleteExportSchedule(c, &pb.DeleteExportScheduleRequest{ScheduleId: scheduleID})
	})
}

func getSchedule(t *testing.T, scheduleID string) *pb.ExportSchedule {
	t.Helper()
	schedule, err := client.GetExportSchedule(ctx(t), &pb.GetExportScheduleRequest{ScheduleId: scheduleID})
	must(t, err, "GetExportSchedule")
	return schedule
}

func TestExportScheduleTilesWindowsPausesAndDeletes(t *testing.T) {
	var refs []*pb.ChannelRef
	for _, channel := range scheduleChannels {
		refs = append(refs, &pb.ChannelRef{Type: channel[0], Id: channel[1]})
	}
	// A job request reused as the template: its window and request_id are the schedule's to set.
	template := &pb.CreateExportJobRequest{
		Selector:      &pb.CreateExportJobRequest_Channels{Channels: &pb.ChannelList{Channels: refs}},
		MessagesSince: ts(t, "2024-01-01T00:00:00Z"),
		Version:       pb.ExportFormatVersion_EXPORT_FORMAT_VERSION_V2,
		RequestId:     newRequestID(t),
	}
	// Four whole seconds ago: windows of 1 s with no lag, so four are due at once.
	start := timestamppb.New(time.Now().Truncate(time.Second).Add(-4 * time.Second))
	request := &pb.CreateExportScheduleRequest{
		Schedule: &pb.ExportSchedule{
			Template:  template,
			Interval:  durationpb.New(time.Second),
			Lag:       durationpb.New(0),
			StartTime: start,
		},
		RequestId: newRequestID(t),
	}
	schedule, err := client.CreateExportSchedule(ctx(t), request)
	must(t, err, "CreateExportSchedule")
	deleteOnCleanup(t, schedule.GetScheduleId())
	if !uuidPattern.MatchString(schedule.GetScheduleId()) {
		t.Fatalf("schedule id %q is not a UUID", schedule.GetScheduleId())
	}
	if schedule.GetOwner() != "anonymous" {
		t.Errorf("owner %q, want anonymous", schedule.GetOwner())
	}
	stored := proto.Clone(template).(*pb.CreateExportJobRequest)
	stored.MessagesSince, stored.RequestId = nil, ""
	if !proto.Equal(schedule.GetTemplate(), stored) {
		t.Errorf("template %v, want it without its window and request_id: %v", schedule.GetTemplate(), stored)
	}
	if schedule.GetInterval().AsDuration() != time.Second || schedule.GetLag() == nil || schedule.GetLag().AsDuration() != 0 {
		t.Errorf("interval %v and lag %v, want 1 s and 0", schedule.GetInterval(), schedule.GetLag())
	}
	if !proto.Equal(schedule.GetStartTime(), start) || !proto.Equal(schedule.GetNextWindowStart(), start) {
		t.Errorf("start_time %v, next_window_start %v, want both %v", schedule.GetStartTime(), schedule.GetNextWindowStart(), start)
	}
	if schedule.GetWindowsStarted() != 0 || schedule.GetPaused() {
		t.Errorf("a new schedule has windows_started %d, paused %v", schedule.GetWindowsStarted(), schedule.GetPaused())
	}
	if schedule.GetCreateTime() == nil || schedule.GetUpdateTime() == nil {
		t.Errorf("create_time %v, update_time %v", schedule.GetCreateTime(), schedule.GetUpdateTime())
	}
	// A retried create with the same request_id is the same schedule.
	again, err := client.CreateExportSchedule(ctx(t), request)
	must(t, err, "CreateExportSchedule again")
	if again.GetScheduleId() != schedule.GetScheduleId() {
		t.Errorf("a retried create made schedule %q, want %q", again.GetScheduleId(), schedule.GetScheduleId())
	}

	// The due windows start: one job each, in window order, tiling time from start_time.
	jobs := checkWindows(t, schedule, waitForScheduleJobs(t, schedule.GetScheduleId(), 3))
	first, err := client.GetExportJob(ctx(t), &pb.GetExportJobRequest{JobId: jobs[0].GetJobId()})
	must(t, err, "GetExportJob of the first window's job")
	window := proto.Clone(stored).(*pb.CreateExportJobRequest)
	window.MessagesSince = start
	window.MessagesUntil = timestamppb.New(start.AsTime().Add(time.Second - time.Microsecond))
	window.RequestId = fmt.Sprintf("schedule:%s:window:%d", schedule.GetScheduleId(), micros(start))
	if !proto.Equal(first.GetRequest(), window) {
		t.Errorf("the first window's job requests %v, want the template with its window %v", first.GetRequest(), window)
	}
	if first.GetScheduleId() != schedule.GetScheduleId() || first.GetOwner() != "anonymous" {
		t.Errorf("the first window's job has schedule_id %q, owner %q", first.GetScheduleId(), first.GetOwner())
	}

	read := getSchedule(t, schedule.GetScheduleId())
	if read.GetWindowsStarted() < uint64(len(jobs)) {
		t.Errorf("windows_started %d, but %d jobs are listed", read.GetWindowsStarted(), len(jobs))
	}
	if want := micros(start) + int64(read.GetWindowsStarted())*1_000_000; micros(read.GetNextWindowStart()) != want {
		t.Errorf("next_window_start %v after %d windows, want %d µs", read.GetNextWindowStart(), read.GetWindowsStarted(), want)
	}
	if read.GetLastJobId() == "" || !proto.Equal(read.GetTemplate(), stored) {
		t.Errorf("GetExportSchedule: last_job_id %q, template %v", read.GetLastJobId(), read.GetTemplate())
	}

	var listed []*pb.ExportSchedule
	for pages, token := 0, ""; ; pages++ {
		if pages == 1000 {
			t.Fatal("ListExportSchedules: more than 1000 pages")
		}
		page, err := client.ListExportSchedules(ctx(t), &pb.ListExportSchedulesRequest{PageSize: 1, PageToken: token})
		must(t, err, "ListExportSchedules")
		if len(page.GetSchedules()) > 1 {
			t.Fatalf("ListExportSchedules(page_size=1) gave %d schedules", len(page.GetSchedules()))
		}
		for _, s := range page.GetSchedules() {
			if s.GetScheduleId() == schedule.GetScheduleId() {
				listed = append(listed, s)
			}
		}
		if token = page.GetNextPageToken(); token == "" {
			break
		}
	}
	if len(listed) != 1 || !proto.Equal(listed[0].GetTemplate(), stored) {
		t.Errorf("ListExportSchedules lists the schedule as %v, want it once", listed)
	}

	// Paused: the answer says so, and no window starts while it is.
	paused, err := client.UpdateExportSchedule(ctx(t), &pb.UpdateExportScheduleRequest{
		Schedule:   &pb.ExportSchedule{ScheduleId: schedule.GetScheduleId(), Paused: true},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"paused"}},
	})
	must(t, err, "UpdateExportSchedule paused")
	if !paused.GetPaused() || !proto.Equal(paused.GetInterval(), schedule.GetInterval()) || !proto.Equal(paused.GetTemplate(), stored) {
		t.Errorf("after the pause %v, want paused and the rest unchanged", paused)
	}
	jobIDs := func(jobs []*pb.ExportJob) []string {
		var ids []string
		for _, job := range jobs {
			ids = append(ids, job.GetJobId())
		}
		sort.Strings(ids)
		return ids
	}
	before := jobIDs(scheduleJobs(t, schedule.GetScheduleId()))
	time.Sleep(2 * time.Second)
	after := scheduleJobs(t, schedule.GetScheduleId())
	if !reflect.DeepEqual(jobIDs(after), before) {
		t.Errorf("jobs %v while paused, want the %d before the pause", jobIDs(after), len(before))
	}
	read = getSchedule(t, schedule.GetScheduleId())
	if !read.GetPaused() || read.GetWindowsStarted() != paused.GetWindowsStarted() || read.GetWindowsStarted() != uint64(len(after)) {
		t.Errorf("paused %v, windows_started %d (%d at the pause), %d jobs: want one job per window",
			read.GetPaused(), read.GetWindowsStarted(), paused.GetWindowsStarted(), len(after))
	}
	checkWindows(t, schedule, after)

	// Deleted: Empty, then NOT_FOUND; the jobs it started stay.
	empty, err := client.DeleteExportSchedule(ctx(t), &pb.DeleteExportScheduleRequest{ScheduleId: schedule.GetScheduleId()})
	must(t, err, "DeleteExportSchedule")
	if empty == nil {
		t.Error("DeleteExportSchedule returned no Empty")
	}
	_, err = client.GetExportSchedule(ctx(t), &pb.GetExportScheduleRequest{ScheduleId: schedule.GetScheduleId()})
	errorDetails(t, err, codes.NotFound, "SCHEDULE_NOT_FOUND")
	_, err = client.GetExportJob(ctx(t), &pb.GetExportJobRequest{JobId: jobs[0].GetJobId()})
	must(t, err, "GetExportJob of a deleted schedule's job")
}

// badRequestFields are the fields of a BadRequest's violations.
func badRequestFields(t *testing.T, badRequest *errdetails.BadRequest) []string {
	t.Helper()
	if badRequest == nil {
		t.Fatal("no BadRequest detail")
	}
	var fields []string
	for _, violation := range badRequest.GetFieldViolations() {
		fields = append(fields, violation.GetField())
	}
	return fields
}

func TestExportScheduleRefusals(t *testing.T) {
	template := &pb.CreateExportJobRequest{
		Selector: &pb.CreateExportJobRequest_Channels{Channels: &pb.ChannelList{Channels: []*pb.ChannelRef{{Type: "messaging", Id: "general"}}}},
	}
	now := timestamppb.New(time.Now().Truncate(time.Second))

	// An interval of 0: INVALID_ARGUMENT on schedule.interval.
	_, err := client.CreateExportSchedule(ctx(t), &pb.CreateExportScheduleRequest{
		Schedule: &pb.ExportSchedule{Template: template, Interval: durationpb.New(0), StartTime: now},
	})
	_, badRequest := errorDetails(t, err, codes.InvalidArgument, "INVALID_REQUEST")
	if fields := badRequestFields(t, badRequest); !reflect.DeepEqual(fields, []string{"schedule.interval"}) {
		t.Errorf("field violations %v, want one for schedule.interval", fields)
	}

	// An update_mask path that is not a changeable field: INVALID_ARGUMENT on update_mask.
	schedule, err := client.CreateExportSchedule(ctx(t), &pb.CreateExportScheduleRequest{
		Schedule: &pb.ExportSchedule{Template: template, Interval: durationpb.New(time.Hour), StartTime: now, Paused: true},
	})
	must(t, err, "CreateExportSchedule paused")
	deleteOnCleanup(t, schedule.GetScheduleId())
	_, err = client.UpdateExportSchedule(ctx(t), &pb.UpdateExportScheduleRequest{
		Schedule:   &pb.ExportSchedule{ScheduleId: schedule.GetScheduleId(), Owner: "someone-else"},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"owner"}},
	})
	_, badRequest = errorDetails(t, err, codes.InvalidArgument, "INVALID_REQUEST")
	if fields := badRequestFields(t, badRequest); !reflect.DeepEqual(fields, []string{"update_mask"}) {
		t.Errorf("field violations %v, want one for update_mask", fields)
	}
	if owner := getSchedule(t, schedule.GetScheduleId()).GetOwner(); owner != "anonymous" {
		t.Errorf("after a refused update the owner is %q, want it unchanged", owner)
	}
}
